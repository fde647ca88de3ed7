"""Click-to-ready in the local sandbox, and where the time goes.

Starts its own sandbox (`python -m sandbox up`, instances pending 0 s by default), then spawns the
default class N times in a row (one user each) through the hub's REST API, following the spawn's
progress stream and the instance's console output as they happen. Prints one line per spawn and
a summary:

    click_to_ready_p50_s=X emulator_p50_s=A user_data_p50_s=B singleuser_p50_s=C hub_check_p50_s=D

- emulator:   POST .../server until the emulator reports the instance `running` (the hub's
              handling, the spawner's RunInstances, the emulator's pending time);
- user_data:  from then until the user data hands over to jupyterhub-singleuser (console line
              "service: ..."): the data plane booting the host, IMDS, user, home, secret, env;
- singleuser: until jupyter-server prints "is running at";
- hub_check:  until the hub reports the server ready (its HTTP check, the proxy route).

Run as root: `.venv/bin/python benchmarks/sandbox_spawn.py [--spawns 5] [--pending-s 0]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]
from e2e_hub import Hub, SandboxProcess

from sandbox.emulator import EmulatorClient

HOSTS = Path("/var/tmp/ec2hub-hosts")


def follow_emulator(client: EmulatorClient, after: int, marks: dict, t0_wall: float) -> None:
    """Stamp the emulator's `running` event for the new instance (its own clock: wall time)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for event in client.events(after=after, timeout=5)["events"]:
            after = max(after, event["seq"])
            if event["state"] == "running":
                marks["running"] = event["time"] - t0_wall
                return


def follow_console(marks: dict, t0: float, stop: threading.Event) -> None:
    """Stamp when the new instance's console shows the hand-over and the server's start."""
    seen_before = {p.name for p in HOSTS.iterdir()} if HOSTS.exists() else set()
    console = None
    while not stop.is_set():
        if console is None and HOSTS.exists():
            fresh = [p for p in HOSTS.iterdir() if p.name.startswith("i-") and p.name not in seen_before]
            if fresh:
                console = fresh[0] / "console.log"
        if console is not None and console.exists():
            text = console.read_text(errors="replace")
            now = time.monotonic() - t0
            if "user_data_done" not in marks and "ec2hub-notebook: service:" in text:
                marks["user_data_done"] = now
            if "singleuser_up" not in marks and "is running at" in text:
                marks["singleuser_up"] = now
                return
        time.sleep(0.01)


def spawn_once(hub: Hub, user: str) -> dict:
    hub.create_user(user)
    marks: dict = {}
    stop = threading.Event()
    emulator = EmulatorClient(hub.env["aws_endpoint_url"])
    after = _last_seq(emulator)
    t0, t0_wall = time.monotonic(), time.time()
    watchers = [
        threading.Thread(target=follow_console, args=(marks, t0, stop), daemon=True),
        threading.Thread(target=follow_emulator, args=(emulator, after, marks, t0_wall), daemon=True),
        threading.Thread(target=lambda: marks.setdefault("post", hub.api("POST", f"/users/{user}/server",
                                                                         {"user_options": {}})), daemon=True),
    ]
    for thread in watchers:
        thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        model = hub.server_model(user)
        if model and model.get("ready"):
            marks["ready"] = time.monotonic() - t0
            break
        time.sleep(0.05)
    stop.set()
    for thread in watchers:
        thread.join(timeout=10)
    hub.stop(user)
    if "ready" not in marks or "running" not in marks:
        raise SystemExit(f"spawn of {user} failed: {marks}")
    return marks


def _last_seq(emulator: EmulatorClient) -> int:
    events = emulator.events(after=0, timeout=0)["events"]
    return max((e["seq"] for e in events), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spawns", type=int, default=5)
    parser.add_argument("--pending-s", type=float, default=0.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the sandbox makes namespaces")
    process = SandboxProcess(REPO / ".sandbox" / "bench.log", pending_s=args.pending_s)
    try:
        env = process.start()
    except RuntimeError as error:
        sys.exit(str(error))
    try:
        hub = Hub(env)
        spawn_once(hub, "bench-warmup")  # first spawn pays for cold caches; not counted
        rows = []
        for n in range(args.spawns):
            m = spawn_once(hub, f"bench-{n}")
            split = {
                "click_to_ready_s": m["ready"],
                "emulator_s": m["running"],
                "user_data_s": m.get("user_data_done", m["running"]) - m["running"],
                "singleuser_s": m.get("singleuser_up", m["ready"]) - m.get("user_data_done", m["running"]),
                "hub_check_s": m["ready"] - m.get("singleuser_up", m["ready"]),
            }
            rows.append(split)
            print(f"spawn={n} " + " ".join(f"{k}={v:.2f}" for k, v in split.items()), flush=True)
        p50 = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"click_to_ready_p50_s={p50['click_to_ready_s']:.2f} emulator_p50_s={p50['emulator_s']:.2f} "
              f"user_data_p50_s={p50['user_data_s']:.2f} singleuser_p50_s={p50['singleuser_s']:.2f} "
              f"hub_check_p50_s={p50['hub_check_s']:.2f} spawns={len(rows)} pending_s={args.pending_s:g}")
    finally:
        process.stop()


if __name__ == "__main__":
    main()
