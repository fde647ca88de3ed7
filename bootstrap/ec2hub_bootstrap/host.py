"""Console lines, commands and files on the instance, for the bootstrap steps.

Every step says on the console what it found or did, one line each, ``<prefix>: <step>: <message>``;
no secret is ever printed. Commands get values as argv, never through a shell.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
from typing import NoReturn


class Console:
    """The instance's console output (cloud-init forwards it to EC2's GetConsoleOutput)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def log(self, step: str, message: str) -> None:
        print(f"{self.prefix}: {step}: {message}", flush=True)

    def die(self, step: str, message: str) -> NoReturn:
        print(f"{self.prefix}: {step}: ERROR: {message}", file=sys.stderr, flush=True)
        sys.exit(1)

    def run(self, step: str, argv: list[str]) -> str:
        """Run ``argv``; on failure, die with its output (which never holds a secret we pass)."""
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if proc.returncode != 0:
            self.die(step, f"{argv[0]} failed ({proc.returncode}): {proc.stdout.strip()}")
        return proc.stdout


def shown(value: str) -> str:
    """A tag value made safe for a one-line console log (escapes newlines, controls, unicode)."""
    return ascii(value)


def write_if_changed(path: str, text: str, mode: int, owner: int = 0) -> bool:
    """Write ``text`` atomically, with ``mode`` and ``owner`` (uid; its primary group) from the
    start; return True if the content changed. Mode and owner are re-applied either way."""
    gid = 0 if owner == 0 else pwd.getpwuid(owner).pw_gid
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                os.chmod(path, mode)
                os.chown(path, owner, gid)
                return False
    except FileNotFoundError:
        pass
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.chown(tmp, owner, gid)
    os.replace(tmp, path)
    return True


def systemd_is_pid1() -> bool:
    """sd_booted(3): systemd is PID 1 exactly when /run/systemd/system exists."""
    return os.path.isdir("/run/systemd/system")


def unit_command(unit_text: str) -> tuple[list[str], dict[str, str]]:
    """The ExecStart= argv and the Environment= variables of a unit file (ours: one ExecStart=,
    one assignment per Environment= line, no specifiers), so that without systemd the same command
    runs in the foreground."""
    argv, env = None, {}
    for line in unit_text.splitlines():
        if line.startswith("ExecStart="):
            argv = shlex.split(line.removeprefix("ExecStart="))
        elif line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    if not argv:
        raise ValueError("no ExecStart= in the unit")
    return argv, env
