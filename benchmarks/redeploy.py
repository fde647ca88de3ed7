"""The redeploy of issue 10's first test, timed: a change of the hub's launch template (a new hub AMI)
deployed into a running sandbox while users' servers run.

Needs `python -m sandbox up` running (as root, beside it). It starts ``--servers`` servers (users
``bench-redeploy-<n>``), then runs ``python -m sandbox deploy -c hub_ami=<a new id>`` while it asks
the hub's API through the load balancer's stand-in every 0.2 s, and prints:

- ``hub_unavailable_s=``: the total time the proxy answered no request (no HTTP answer, or a 5xx);
- ``servers_lost=``: servers running before that do not answer their ``/api/status`` through the
  new hub within 120 s after the deploy;
- ``instances_terminated=``: notebook instances terminated (or stopped) by the redeploy;
- ``redeploy_s=``: how long ``python -m sandbox deploy`` took (synth, update, replacement).

Run: ``.venv/bin/python benchmarks/redeploy.py --servers 2``
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The e2e helpers (the hub's REST API and the proxy), as the e2e tests use them.
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from e2e_hub import ENV_FILE, Hub
from test_hub_replacement import status_of


class Prober(threading.Thread):
    """Asks the hub's API every ``interval`` s; sums the time between the first failed answer and
    the next good one."""

    def __init__(self, url: str, interval: float = 0.2):
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.unavailable_s = 0.0
        self._down_since: float | None = None
        self._done = threading.Event()

    def ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as answer:
                return answer.status < 500
        except urllib.error.HTTPError as error:
            return error.code < 500
        except OSError:
            return False

    def run(self) -> None:
        while not self._done.is_set():
            now, ok = time.monotonic(), self.ok()
            if not ok and self._down_since is None:
                self._down_since = now
            elif ok and self._down_since is not None:
                self.unavailable_s += now - self._down_since
                self._down_since = None
            self._done.wait(self.interval)

    def finish(self) -> float:
        self._done.set()
        self.join()
        if self._down_since is not None:
            self.unavailable_s += time.monotonic() - self._down_since
        return self.unavailable_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=2)
    args = parser.parse_args(argv)
    if not ENV_FILE.exists():
        print("no running sandbox (.sandbox/env.json): start `python -m sandbox up` first", file=sys.stderr)
        return 1
    hub = Hub(json.loads(ENV_FILE.read_text()))
    names = [f"bench-redeploy-{n}" for n in range(args.servers)]
    for name in names:
        hub.create_user(name)
        model = hub.server_model(name)
        if not (model and model.get("ready")):
            hub.start(name)
    before = {i["InstanceId"]: i["State"]["Name"] for i in hub.all_notebook_instances()}
    prober = Prober(f"{hub.url}/hub/api/")
    prober.start()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "sandbox", "deploy", "-c", f"hub_ami=ami-{secrets.token_hex(9)[:17]}"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    redeploy_s = time.monotonic() - started
    if done.returncode != 0:
        prober.finish()
        print(done.stdout + done.stderr, file=sys.stderr)
        return 1
    lost = 0
    for name in names:
        deadline = time.monotonic() + 120
        while (answer := status_of(hub, name))[0] != 200 and time.monotonic() < deadline:
            time.sleep(1)
        lost += answer[0] != 200
    unavailable_s = prober.finish()
    after = {i["InstanceId"]: i["State"]["Name"] for i in hub.all_notebook_instances()}
    ended = sum(1 for iid, state in before.items() if state == "running" and after.get(iid) != "running")
    print(f"hub_unavailable_s={unavailable_s:.1f}")
    print(f"servers_lost={lost}")
    print(f"instances_terminated={ended}")
    print(f"redeploy_s={redeploy_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
