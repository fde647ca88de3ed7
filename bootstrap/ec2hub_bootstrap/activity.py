"""ec2hub activity agent and idle backstop (``ec2hub-activity.service``, as root).

Every ``EC2HUB_ACTIVITY_INTERVAL_S`` it samples the server's kernels, terminals and status, the
CPU and the GPU; while any is busy it posts activity to the hub; when the hub has been silent for
``EC2HUB_BACKSTOP_GRACE_S`` and the server idle past its limit, it powers the instance off. The
contract, thresholds and reasons: docs/ARCHITECTURE.md §17.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .host import Console
from .notebook import ENV_FILE, parse_env_file

console = Console("ec2hub-activity")
log = console.log

HTTP_TIMEOUT_S = 10


@dataclass(frozen=True)
class Limits:
    """The agent's settings, from the server's env (``EC2HUB_*``; seconds; 0: none)."""

    idle_timeout: int = 0
    max_age: int = 0
    interval: int = 60
    backstop_grace: int = 0
    busy_cpus: float = 0.5
    busy_gpu_percent: float = 10.0

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Limits:
        def number(key: str, default, kind=int):
            try:
                return kind(env.get(key, default))
            except ValueError:
                return default

        return cls(
            idle_timeout=number("EC2HUB_IDLE_TIMEOUT_S", 0), max_age=number("EC2HUB_MAX_AGE_S", 0),
            interval=max(1, number("EC2HUB_ACTIVITY_INTERVAL_S", 60)),
            backstop_grace=number("EC2HUB_BACKSTOP_GRACE_S", 0),
            busy_cpus=number("EC2HUB_BUSY_CPUS", 0.5, float),
            busy_gpu_percent=number("EC2HUB_BUSY_GPU_PERCENT", 10.0, float),
        )


# --- samples (pure where they can be) --------------------------------------------------------------
def cpu_times(proc_stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat's first line (idle and iowait are not busy)."""
    fields = [int(x) for x in proc_stat.splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def cpus_busy(before: tuple[int, int], after: tuple[int, int], cpus: int) -> float:
    """How many CPUs' worth of time was busy between two ``cpu_times``."""
    total = after[1] - before[1]
    return 0.0 if total <= 0 else (after[0] - before[0]) / total * cpus


def gpu_percent() -> float | None:
    """The busiest GPU's utilisation (nvidia-smi), or None without the tool or a GPU."""
    if not shutil.which("nvidia-smi"):
        return None
    proc = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False, timeout=30)
    values = [float(v) for v in proc.stdout.split() if v.replace(".", "", 1).isdigit()]
    return max(values) if proc.returncode == 0 and values else None


@dataclass
class ServerView:
    """What the server's API said at one sample (None: it did not answer)."""

    kernels: list[dict] | None = None
    terminals: list[dict] | None = None
    last_activity: str | None = None


def busy_reasons(view: ServerView, previous: ServerView, *, cpus: float, gpu: float | None,
                 limits: Limits) -> list[str]:
    """Why the server counts as busy at this sample; empty: idle."""
    reasons = []
    busy_kernels = [k for k in view.kernels or [] if k.get("execution_state") == "busy"]
    if busy_kernels:
        reasons.append(f"{len(busy_kernels)} kernel(s) busy")
    before = {t.get("name"): t.get("last_activity") for t in previous.terminals or []}
    used = [t for t in view.terminals or [] if before.get(t.get("name"), "") != t.get("last_activity")]
    if previous.terminals is not None and used:
        reasons.append(f"{len(used)} terminal(s) in use")
    if previous.last_activity and view.last_activity and view.last_activity > previous.last_activity:
        reasons.append("server activity")
    if cpus >= limits.busy_cpus:
        reasons.append(f"CPU {cpus:.2f} busy")
    if gpu is not None and gpu >= limits.busy_gpu_percent:
        reasons.append(f"GPU {gpu:.0f} %")
    return reasons


def backstop_due(*, now: float, started: float, last_busy: float, last_contact: float, limits: Limits) -> str | None:
    """Why the instance must power itself off now, or None (monotonic seconds)."""
    if not limits.backstop_grace or now - last_contact < limits.backstop_grace:
        return None
    silent = f"no answer from the hub for {now - last_contact:.0f} s"
    if limits.idle_timeout and now - last_busy >= limits.idle_timeout:
        return f"idle for {now - last_busy:.0f} s (idle_timeout {limits.idle_timeout} s) and {silent}"
    if limits.max_age and now - started >= limits.max_age:
        return f"running for {now - started:.0f} s (max_age {limits.max_age} s) and {silent}"
    return None


def activity_body(server_name: str, when: datetime) -> dict:
    """The activity report jupyterhub-singleuser posts (JupyterHub's POST /users/:name/activity)."""
    stamp = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return {"servers": {server_name: {"last_activity": stamp}}, "last_activity": stamp}


# --- the agent -------------------------------------------------------------------------------------
def local_server_url(service_url: str) -> str:
    """The server as seen from its own instance: JUPYTERHUB_SERVICE_URL with a wildcard bind
    address made loopback, ending in /."""
    parts = urllib.parse.urlsplit(service_url)
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme or "http", netloc, parts.path.rstrip("/") + "/", "", ""))


@dataclass
class Agent:
    """One instance's agent; ``tick()`` is one sample and its consequences."""

    env_file: str = ENV_FILE
    clock: Callable[[], float] = time.monotonic
    poweroff: Callable[[], None] = field(default=lambda: subprocess.run(["systemctl", "poweroff"], check=False))
    token: str = ""
    started: float = 0.0
    last_busy: float = 0.0
    last_contact: float = 0.0
    previous: ServerView = field(default_factory=ServerView)
    cpu_before: tuple[int, int] | None = None
    busy: bool | None = None
    hub_ok: bool | None = None

    def read_env(self) -> dict[str, str] | None:
        try:
            with open(self.env_file, encoding="utf-8") as f:
                return parse_env_file(f.read())
        except FileNotFoundError:
            return None

    def _request(self, url: str, env: dict, *, body: dict | None = None, auth: bool = True):
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "token " + env["JUPYTERHUB_API_TOKEN"]
        request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                         method="GET" if body is None else "POST", headers=headers)
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            data = resp.read()
            return json.loads(data) if data else None

    def server_view(self, env: dict) -> ServerView:
        base = local_server_url(env.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8888/"))
        view = ServerView()
        for attr, path in (("kernels", "api/kernels"), ("terminals", "api/terminals"), ("last_activity", "api/status")):
            try:
                answer = self._request(f"{base}{path}?no_track_activity=1", env)
            except (OSError, ValueError):
                continue  # not answering (or the hub cannot check our token): nothing busy to see
            if attr == "last_activity":
                answer = answer.get("last_activity") if isinstance(answer, dict) else None
            elif not isinstance(answer, list):
                answer = None
            setattr(view, attr, answer)
        return view

    def report(self, env: dict, busy: bool) -> bool:
        """Post activity while busy, else only ask whether the hub answers; whether it did."""
        try:
            if busy:
                body = activity_body(env.get("JUPYTERHUB_SERVER_NAME", ""), datetime.now(UTC))
                self._request(env["JUPYTERHUB_ACTIVITY_URL"], env, body=body)
            else:
                self._request(env["JUPYTERHUB_API_URL"].rstrip("/") + "/", env, auth=False)
            return True
        except (OSError, ValueError, KeyError):
            return False

    def tick(self) -> str | None:
        """One sample; returns the backstop's reason when it powered the instance off."""
        env = self.read_env()
        now = self.clock()
        if not env or not env.get("JUPYTERHUB_API_TOKEN"):
            return None  # the server has never started here: no limits known yet
        limits = Limits.from_env(env)
        if env["JUPYTERHUB_API_TOKEN"] != self.token:  # a new start of the server
            self.token, self.started, self.last_busy, self.last_contact = env["JUPYTERHUB_API_TOKEN"], now, now, now
            self.previous = ServerView()
            log("start", f"server started: idle_timeout {limits.idle_timeout} s, max_age {limits.max_age} s, "
                f"sample every {limits.interval} s, backstop after {limits.backstop_grace} s without the hub")
        with open("/proc/stat", encoding="ascii") as f:
            cpu_now = cpu_times(f.read())
        cpus = cpus_busy(self.cpu_before, cpu_now, os.cpu_count() or 1) if self.cpu_before else 0.0
        self.cpu_before = cpu_now
        view = self.server_view(env)
        reasons = busy_reasons(view, self.previous, cpus=cpus, gpu=gpu_percent(), limits=limits)
        self.previous = view
        busy = bool(reasons)
        if busy:
            self.last_busy = now
        if busy != self.busy:
            log("activity", "busy: " + ", ".join(reasons) if busy else "idle")
            self.busy = busy
        ok = self.report(env, busy)
        if ok:
            self.last_contact = now
        if ok != self.hub_ok:
            log("hub", "answers" if ok else "does not answer")
            self.hub_ok = ok
        reason = backstop_due(now=now, started=self.started, last_busy=self.last_busy,
                              last_contact=self.last_contact, limits=limits)
        if reason:
            log("backstop", f"powering off: {reason}")
            self.poweroff()
        return reason

    def interval(self) -> int:
        env = self.read_env()
        # No env file yet: the server's first start is waiting for its secret; look again soon.
        return Limits.from_env(env).interval if env else 5

    def run(self) -> None:
        log("start", f"watching {self.env_file}")
        while True:
            try:
                if self.tick():
                    return
            except Exception as error:  # noqa: BLE001 (one failed sample must not end the agent)
                log("error", f"{type(error).__name__}: {error}")
            time.sleep(self.interval())


def main(argv: list[str]) -> None:
    if argv != ["run"]:
        console.die("usage", "python -m ec2hub_bootstrap.activity run")
    Agent(env_file=os.environ.get("EC2HUB_ENV_FILE", ENV_FILE)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
