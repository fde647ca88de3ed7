"""Faults `python -m sandbox inject` adds to a running sandbox beyond the emulator's own: a hard
kill of the hub process on the hub host.

The command line runs in a process of its own, not in `python -m sandbox up` that holds the hosts,
so it finds the hub host the way :func:`sandbox.host.kill_processes_under` finds a host's
processes: by their root directory, which lies in the host's state directory. The host's PID 1
is the one whose innermost PID (``NSpid``) is 1; commands then run inside the host with
``nsenter`` into its namespaces and root, as :meth:`sandbox.host.IsolatedHost.exec` does.

On a host booted with systemd as PID 1 the kill goes through ``systemctl kill`` and the unit's
``Restart=always`` brings the hub back, as on EC2; without systemd (the hub runs in the
foreground of its user data) nothing restarts it, and the command says so.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from .host import DEFAULT_STATE_ROOT, HOST_PATH

HUB_UNIT = "ec2hub-hub.service"
# The hub's command line on the hub host (bootstrap/hub: ExecStart and its no-systemd twin).
HUB_PATTERN = "bin/jupyterhub -f"


class FaultError(RuntimeError):
    """The fault could not be injected; the message says why."""


def host_pid1(instance_id: str, state_root: Path = DEFAULT_STATE_ROOT) -> int:
    """The PID (as this machine sees it) of the host's PID 1."""
    marker = str(Path(state_root) / instance_id) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (os.readlink(entry / "root") + "/").startswith(marker):
                continue
            nspid = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if nspid.split()[-1] == "1":
            return int(entry.name)
    raise FaultError(f"no running host {instance_id} under {state_root} (is the sandbox up?)")


def exec_in(pid1: int, argv: list[str], *, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``argv`` inside the host whose PID 1 is ``pid1``, as root; never through a shell."""
    return subprocess.run(
        ["nsenter", f"--target={pid1}", "--mount", "--pid", "--net", "--uts", "--root", "--wd", "--", *argv],
        capture_output=True, text=True, timeout=timeout, env={"PATH": HOST_PATH, "LANG": "C.UTF-8"}, check=False,
    )


def hub_pids(pid1: int) -> list[int]:
    """The hub processes on the host (PIDs inside it)."""
    found = exec_in(pid1, ["pgrep", "-f", HUB_PATTERN])
    return sorted(int(p) for p in found.stdout.split())


def has_systemd(pid1: int) -> bool:
    # sd_booted(3): systemd is PID 1 exactly when /run/systemd/system exists.
    return exec_in(pid1, ["test", "-d", "/run/systemd/system"]).returncode == 0


def kill_hub(instance_id: str, *, state_root: Path = DEFAULT_STATE_ROOT, wait_back: float = 90) -> dict:
    """SIGKILL the hub process on the hub host; wait up to ``wait_back`` s for its service manager
    to start a new one. Returns ``{"killed": [...], "systemd": bool, "restarted": [...]}``."""
    pid1 = host_pid1(instance_id, state_root)
    before = hub_pids(pid1)
    if not before:
        raise FaultError(f"no hub process ({HUB_PATTERN!r}) runs on {instance_id}")
    systemd = has_systemd(pid1)
    argv = (["systemctl", "kill", "--signal=SIGKILL", "--kill-who=main", HUB_UNIT] if systemd
            else ["pkill", "-KILL", "-f", HUB_PATTERN])
    done = exec_in(pid1, argv)
    if done.returncode != 0:
        raise FaultError(f"{' '.join(argv)} on {instance_id}: exit {done.returncode}: {done.stderr.strip()}")
    restarted: list[int] = []
    deadline = time.monotonic() + (wait_back if systemd else 0)
    while systemd and time.monotonic() < deadline:
        restarted = [p for p in hub_pids(pid1) if p not in before]
        if restarted:
            break
        time.sleep(0.5)
    return {"instance_id": instance_id, "killed": before, "systemd": systemd, "restarted": restarted}
