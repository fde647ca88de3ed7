"""Faults `python -m sandbox inject` adds to a running sandbox beyond the emulator's own: a hard
kill of the hub process on the hub host.

The command line runs in a process of its own, not in `python -m sandbox up` that holds the hosts,
so it finds the hub host the way :func:`sandbox.host.kill_processes_under` finds a host's
processes: by their root directory or command line, which name the host's state directory. The
host's PID 1 is the one whose innermost PID (``NSpid``) is 1; commands then run inside the host
with ``nsenter`` into its namespaces and root, as :meth:`sandbox.host.IsolatedHost.exec` does.

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
    """The PID (as this machine sees it) of the host's PID 1: a process in a PID namespace of its
    own (innermost ``NSpid`` 1) whose root lies in the host's state directory, or that descends
    from the process which started the host (its command line names that directory: the
    ``unshare`` of a plain host, the launcher of a booted machine)."""
    marker = str(Path(state_root) / instance_id)
    starters, seen = [], set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if _is_pid1(entry) and (os.readlink(entry / "root") + "/").startswith(marker + "/"):
                return int(entry.name)
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                starters.append(int(entry.name))
        except OSError:
            continue
    while starters:  # breadth-first through their descendants
        pid = starters.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        proc = Path(f"/proc/{pid}")
        try:
            if _is_pid1(proc):
                return pid
            starters += [int(c) for c in (proc / "task" / str(pid) / "children").read_text().split()]
        except OSError:
            continue
    raise FaultError(f"no running host {instance_id} under {state_root} (is the sandbox up?)")


def _is_pid1(proc: Path) -> bool:
    """PID 1 of a PID namespace below this machine's (``NSpid: <ours> ... 1``)."""
    nspid = next((line.split()[1:] for line in (proc / "status").read_text().splitlines()
                  if line.startswith("NSpid:")), [])
    return len(nspid) > 1 and nspid[-1] == "1"


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
