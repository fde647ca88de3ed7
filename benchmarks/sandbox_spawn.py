"""Click-to-ready in the local sandbox, and where the time goes.

Starts its own sandbox (`python -m sandbox up`, instances pending 0 s by default), then spawns the
default class N times in a row (one user each) through the hub's REST API, following the
emulator's events and the hub's server model as they happen, and reading the instance's own
journal (its systemd's, wall-clock timestamps) once the server is ready. Prints one line per spawn
and a summary:

    click_to_ready_p50_s=X emulator_p50_s=A boot_p50_s=B user_data_p50_s=C singleuser_p50_s=D
    hub_check_p50_s=E ratio_to_singleuser=X/D without_boot_p50_s=W ratio_without_boot=W/D

- emulator:   POST .../server until the emulator reports the instance `running` (the hub's
              handling, the spawner's RunInstances, the emulator's pending time);
- boot:       from then until the user data's bootstrap starts (its first line, "start:"): the
              data plane wiring the host, systemd-nspawn booting systemd, cloud-init's first
              two stages (DHCP, the IMDS crawl, the boothook that hands the bootstrap to systemd
              as ec2hub-user-data.service, which starts at sysinit.target). Split in boot_host
              (until the instance's journald starts: the data plane, nspawn, systemd's first
              steps) and boot_cloud_init (from then: systemd's early units and those stages);
- user_data:  until the user data hands over to systemd ("service: ..."): IMDS, tags, user,
              home, secret, env file, unit;
- singleuser: until jupyter-server, started by its unit, logs "is running at";
- without_boot: click_to_ready minus boot: jupyter-server's start and what ec2hub adds to it
              (the hub and spawner, the bootstrap, the readiness check), without the machine's
              boot, which is EC2's (on AWS 25 s or more before any user data runs);
- hub_check:  until the hub reports the server ready (JupyterHub's HTTP check after start()
              returned, the proxy route; the spawner's own wait for the server's first answer,
              wait_for_server, ends when the server answers, within singleuser).

Run as root: `.venv/bin/python benchmarks/sandbox_spawn.py [--spawns 5] [--pending-s 0] [--keep-logs DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]
from e2e_hub import Hub, SandboxProcess

from infra.userdata import EARLY_UNITS
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
                marks["instance_id"] = event["instance_id"]
                return


# (mark, unit or syslog identifier, text): the first journal entry of each, in this order.
JOURNAL_MARKS = (
    ("journal_start", "systemd-journald", "Journal started"),
    ("user_data_start", EARLY_UNITS["notebook"], "ec2hub-notebook: start:"),
    ("user_data_done", EARLY_UNITS["notebook"], "ec2hub-notebook: service:"),
    ("singleuser_up", "ec2hub-singleuser.service", "is running at"),
)


def journal_marks(instance_id: str, t0_wall: float) -> dict:
    """When the instance logged each of JOURNAL_MARKS, in seconds after ``t0_wall``."""
    journal = HOSTS / instance_id / "upper" / "var" / "log" / "journal"
    out = subprocess.run(["journalctl", "-D", str(journal), "-o", "json", "--no-pager",
                          "--output-fields=MESSAGE,SYSLOG_IDENTIFIER,_SYSTEMD_UNIT"],
                         capture_output=True, text=True, check=False).stdout
    marks: dict = {}
    for line in out.splitlines():
        entry = json.loads(line)
        message = entry.get("MESSAGE")
        if not isinstance(message, str):
            continue
        for mark, source, text in JOURNAL_MARKS:
            if mark not in marks and source in (entry.get("SYSLOG_IDENTIFIER"), entry.get("_SYSTEMD_UNIT")) \
                    and text in message:
                marks[mark] = int(entry["__REALTIME_TIMESTAMP"]) / 1e6 - t0_wall
    return marks


def keep_logs(instance_id: str, into: Path) -> None:
    """Copy the instance's journal (precise timestamps) and cloud-init's own log into ``into``."""
    root = HOSTS / instance_id / "upper"
    into.mkdir(parents=True, exist_ok=True)
    journal = subprocess.run(["journalctl", "-D", str(root / "var" / "log" / "journal"), "-o", "short-precise",
                              "--no-pager"], capture_output=True, text=True, check=False).stdout
    (into / f"{instance_id}.journal").write_text(journal)
    for name in ("cloud-init.log", "cloud-init-output.log"):
        if (root / "var" / "log" / name).exists():
            (into / f"{instance_id}.{name}").write_bytes((root / "var" / "log" / name).read_bytes())


def spawn_once(hub: Hub, user: str, keep: Path | None = None) -> dict:
    hub.create_user(user)
    marks: dict = {}
    emulator = EmulatorClient(hub.env["aws_endpoint_url"])
    after = _last_seq(emulator)
    t0, t0_wall = time.monotonic(), time.time()
    watchers = [
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
    for thread in watchers:
        thread.join(timeout=10)
    if "instance_id" in marks:
        marks.update(journal_marks(marks["instance_id"], t0_wall))
        if keep:
            keep_logs(marks["instance_id"], keep)
    hub.stop(user)
    missing = {"ready", "running", *(m for m, _, _ in JOURNAL_MARKS)} - set(marks)
    if missing:
        raise SystemExit(f"spawn of {user}: no {sorted(missing)}: {marks}")
    return marks


def _last_seq(emulator: EmulatorClient) -> int:
    events = emulator.events(after=0, timeout=0)["events"]
    return max((e["seq"] for e in events), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spawns", type=int, default=5)
    parser.add_argument("--pending-s", type=float, default=0.0)
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy each instance's journal and cloud-init log into DIR (to see where the time goes)")
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
            m = spawn_once(hub, f"bench-{n}", args.keep_logs)
            split = {
                "click_to_ready_s": m["ready"],
                "emulator_s": m["running"],
                "boot_s": m["user_data_start"] - m["running"],
                "boot_host_s": m["journal_start"] - m["running"],
                "boot_cloud_init_s": m["user_data_start"] - m["journal_start"],
                "user_data_s": m["user_data_done"] - m["user_data_start"],
                "singleuser_s": m["singleuser_up"] - m["user_data_done"],
                "hub_check_s": m["ready"] - m["singleuser_up"],
            }
            split["without_boot_s"] = split["click_to_ready_s"] - split["boot_s"]
            rows.append(split)
            print(f"spawn={n} " + " ".join(f"{k}={v:.2f}" for k, v in split.items()), flush=True)
        p50 = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"click_to_ready_p50_s={p50['click_to_ready_s']:.2f} emulator_p50_s={p50['emulator_s']:.2f} "
              f"boot_p50_s={p50['boot_s']:.2f} boot_host_p50_s={p50['boot_host_s']:.2f} "
              f"boot_cloud_init_p50_s={p50['boot_cloud_init_s']:.2f} user_data_p50_s={p50['user_data_s']:.2f} "
              f"singleuser_p50_s={p50['singleuser_s']:.2f} hub_check_p50_s={p50['hub_check_s']:.2f} "
              f"ratio_to_singleuser={p50['click_to_ready_s'] / p50['singleuser_s']:.2f} "
              f"without_boot_p50_s={p50['without_boot_s']:.2f} "
              f"ratio_without_boot={p50['without_boot_s'] / p50['singleuser_s']:.2f} "
              f"spawns={len(rows)} pending_s={args.pending_s:g} load1={os.getloadavg()[0]:.1f}")
    finally:
        process.stop()


if __name__ == "__main__":
    main()
