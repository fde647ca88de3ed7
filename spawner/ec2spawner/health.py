"""Health probes of the notebook servers themselves, one prober per hub shared by every server.

EC2 says whether an instance runs, not whether ``jupyterhub-singleuser`` on it still answers: a
server that died and was not restarted by its unit, or that hangs, leaves a ``running`` instance
billing on behind a proxy that answers 503. The :class:`HealthProber` asks each server itself:

- **What a probe is.** A TCP connection to the server's URL and ``GET <base_url>api`` (the
  version endpoint jupyter-server answers without authentication), ``Connection: close``. Any HTTP
  status line within ``timeout`` seconds is an answer: the server process is alive and its event
  loop turns. A TCP connect alone is not enough: the kernel of the instance accepts connections
  into the listen backlog of a server that is stopped (SIGSTOP) or whose event loop is stuck, so
  only an HTTP answer tells a hung server from a live one. No credential is sent, and the
  endpoint does not count as activity (jupyter-server's ``APIVersionHandler`` is
  ``@allow_unauthenticated`` with ``_track_activity = False``): the idle culler is not fooled.
- **Spread and bounded.** One task per hub schedules every server once per ``interval``, each at
  its own random phase, with 10 % jitter per round, so a thousand servers are probed ~33 per
  second at the 30 s default, never all at once. Each probe is bounded by ``timeout``, and at most
  ``concurrency`` are in flight. A probe is a few socket calls on the event loop; nothing waits on it.
- **What counts against a server** (:class:`Finding`): *refused* (the instance's kernel answered
  and nothing listens: the server died), *no answer* (connected, but no HTTP answer in time, or the
  connection closed: hung or dying). *Unreachable* (connect timed out, no route to that host)
  counts only while another server was reached within the last interval: otherwise the hub cannot
  tell a dead instance from its own network failing.
- **Never the hub's own failure.** A probe that fails on the hub's side (no file descriptor or
  buffer for a socket, the hub's network down, no route at all, a local firewall: see
  ``HUB_SIDE_ERRNOS``) counts for no one, and no server is declared dead until ``window`` seconds
  after the last such failure. And when more than half of the probed servers (two or more) fail at
  once, the hub takes it for a problem on its side of the network and declares no one dead.
- **Dead** (:meth:`HealthProber.verdict`) only after ``failures`` consecutive failed probes that
  span at least ``window`` seconds. The spawner only watches a server once JupyterHub has seen it
  answer (never during start: start() waits for its first answer with the same probe,
  ``EC2Spawner.wait_for_server``), acts on the
  verdict in ``poll()``, and ends the instance (``EC2Spawner.poll``).

The counters (:data:`COUNTERS`) are process-wide; ec2spawner.metrics serves them at /hub/metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import html
import logging
import random
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import ClassVar

from .loops import PerLoop

log = logging.getLogger(__name__)

# Lines of the instance's console output the user may see: the notebook bootstrap prefixes every
# step with this and never prints a secret (bootstrap/notebook/user-data.sh, "console output").
CONSOLE_PREFIX = "ec2hub-notebook:"
CONSOLE_LINES = 8

# errno values of a probe that failed before anything reached the server's instance: the hub
# itself ran out of descriptors or buffers, its network is down or has no route, or a local
# firewall refused the connection. They say nothing about the server.
HUB_SIDE_ERRNOS = frozenset({
    errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL, errno.EADDRINUSE,
    errno.ENETDOWN, errno.ENETUNREACH, errno.EACCES, errno.EPERM, errno.EAFNOSUPPORT,
})


class Finding:
    """What one probe found (plain strings: they go into logs and the user's message)."""

    OK = "ok"
    REFUSED = "refused"  # the instance answered with a reset: nothing listens on the port
    NO_ANSWER = "no-answer"  # connected, but no HTTP answer within the timeout (or closed)
    UNREACHABLE = "unreachable"  # connect timed out, or no route to that one host
    HUB_SIDE = "hub-side"  # failed on the hub's side: counts for no one


def status_code(status_line: str) -> int:
    """The status of an HTTP status line as :func:`probe` returns it (``HTTP/1.1 200 OK``); 599 when
    it has none (not an answer JupyterHub would take)."""
    parts = status_line.split(maxsplit=2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 599


@dataclass
class ProbeCounters:
    """Process-wide probe counts (monotonic), for a metrics exporter."""

    attempts: int = 0
    failures: int = 0  # probes that found refused, no answer or unreachable
    hub_side: int = 0  # probes that failed on the hub's side (counted for no one)
    declared_dead: int = 0  # servers ended because of their probes
    outage_holds: int = 0  # verdicts held back because most servers failed at once

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


COUNTERS = ProbeCounters()


async def probe(url: str, path: str, timeout: float) -> tuple[str, str]:
    """Probe one server: ``(finding, detail)``; ``detail`` is a few words for logs and users."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    context = None
    if secure:  # liveness only, and nothing secret is sent: the certificate is not checked
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    writer = None
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, port, ssl=context), timeout)
        except TimeoutError:
            return Finding.UNREACHABLE, f"no connection to :{port} within {timeout:g} s"
        except ConnectionRefusedError:
            return Finding.REFUSED, f"connection to :{port} refused"
        except socket.gaierror as error:  # the hub's resolver: says nothing about the server
            return Finding.HUB_SIDE, f"the hub could not resolve {parts.hostname} ({error})"
        except OSError as error:
            if error.errno in HUB_SIDE_ERRNOS:
                return Finding.HUB_SIDE, f"the hub could not connect ({errno.errorcode.get(error.errno, error)})"
            return Finding.UNREACHABLE, f"no connection to :{port} ({error.strerror or error})"
        request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        try:
            writer.write(request.encode())
            line = await asyncio.wait_for(reader.readline(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return Finding.NO_ANSWER, f"no answer on :{port} within {timeout:g} s"
        except OSError as error:
            return Finding.NO_ANSWER, f"connection on :{port} broken ({error.strerror or error})"
        if not line.startswith(b"HTTP/"):
            return Finding.NO_ANSWER, f"connection on :{port} closed without an answer"
        return Finding.OK, line.decode("latin-1").strip()
    finally:
        if writer is not None:
            writer.transport.abort()  # no lingering close: the answer is all that was wanted


@dataclass
class Target:
    """One watched server: where it is, and its current streak of failed probes."""

    key: str
    url: str
    path: str
    due: float = 0.0
    failures: int = 0
    first_failure: float | None = None
    last: str = ""
    detail: str = ""
    probing: bool = False
    forgotten: bool = False


@dataclass
class HealthProber:
    """The probes of one hub's servers (see the module docstring)."""

    interval: float = 30.0
    timeout: float = 10.0
    window: float = 180.0
    failures: int = 3
    concurrency: int = 100
    outage_fraction: float = 0.5
    logger: logging.Logger = log
    targets: dict[str, Target] = field(default_factory=dict)

    _registry: ClassVar[PerLoop[HealthProber]] = PerLoop()

    def __post_init__(self):
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._failing: set[str] = set()  # targets whose latest probe failed
        self._answered: set[str] = set()  # targets with at least one counted probe
        self._hub_side_at = float("-inf")  # last probe that failed on the hub's side
        self._reached: list[tuple[float, str]] = []  # the two latest (time, key) that connected
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._task: asyncio.Task | None = None
        self._probes: set[asyncio.Task] = set()
        self._in_outage = False

    @classmethod
    def for_hub(cls, hub_id: str, **kwargs) -> HealthProber:
        """The prober of ``hub_id`` on the running loop, created on first use (first settings win)."""
        prober, _ = cls._registry.get_or_create(hub_id, lambda: cls(**kwargs))
        prober.ensure_running()
        return prober

    @classmethod
    async def stop_all(cls) -> None:
        for prober in cls._registry.pop_all():
            await prober.stop()

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ec2hub-health")

    async def stop(self) -> None:
        for task in [self._task, *self._probes]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- what the spawner uses ------------------------------------------------------------------

    def watch(self, key: str, url: str, path: str) -> None:
        """Probe ``url`` + ``path`` from now on (first probe at a random point of one interval)."""
        target = self.targets.get(key)
        if target is not None:
            target.url, target.path = url, path
            return
        target = self.targets[key] = Target(key, url, path)
        self._schedule(target, time.monotonic() + random.uniform(0, self.interval))

    def forget(self, key: str) -> None:
        target = self.targets.pop(key, None)
        if target is not None:
            target.forgotten = True
        self._failing.discard(key)
        self._answered.discard(key)

    def verdict(self, key: str, now: float | None = None) -> str | None:
        """Why the server is dead, or None while it is alive or its state cannot be told."""
        target = self.targets.get(key)
        if target is None or target.first_failure is None:
            return None
        now = time.monotonic() if now is None else now
        if target.failures < self.failures or now - target.first_failure < self.window:
            return None
        if now - self._hub_side_at < self.window:
            return None  # the hub's own network failed recently: its findings prove nothing
        if self.in_outage():
            if not self._in_outage:
                COUNTERS.outage_holds += 1
                self.logger.warning("ec2hub health: %d of %d servers fail their probes at once; taking it for "
                                    "a problem on the hub's side, declaring no server dead",
                                    len(self._failing), len(self._answered))
            self._in_outage = True
            return None
        self._in_outage = False
        if target.last == Finding.UNREACHABLE and not self._other_reached(key, now):
            return None  # no other server reached lately: a dead instance or our network?
        return f"{target.detail}; failing for {now - target.first_failure:.0f} s ({target.failures} probes)"

    def in_outage(self) -> bool:
        """More than ``outage_fraction`` of two or more probed servers fail at the same time."""
        answered = len(self._answered)
        return answered >= 2 and len(self._failing) > self.outage_fraction * answered

    # -- the schedule ---------------------------------------------------------------------------

    def _schedule(self, target: Target, due: float) -> None:
        target.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, target.key))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                due, _, key = heapq.heappop(self._heap)
                target = self.targets.get(key)
                if target is None or target.due != due or target.probing:
                    continue  # forgotten or rescheduled meanwhile
                target.probing = True
                task = asyncio.create_task(self._probe(target))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
            self._wake.clear()
            delay = self._heap[0][0] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _probe(self, target: Target) -> None:
        try:
            async with self._slots:
                COUNTERS.attempts += 1
                try:
                    finding, detail = await probe(target.url, target.path, self.timeout)
                except Exception as error:  # noqa: BLE001 (a bug or odd error here must not stop probing)
                    finding, detail = Finding.HUB_SIDE, f"probe error: {error!r}"
            self.record(target, finding, detail, time.monotonic())
        finally:
            target.probing = False
            if not target.forgotten:
                jitter = random.uniform(-0.1, 0.1) * self.interval
                self._schedule(target, time.monotonic() + self.interval + jitter)

    def record(self, target: Target, finding: str, detail: str, now: float) -> None:
        """Account one probe's finding to its target (the state machine, without the network)."""
        if target.forgotten:
            return
        if finding == Finding.HUB_SIDE:
            COUNTERS.hub_side += 1
            if now - self._hub_side_at > self.interval:
                self.logger.warning("ec2hub health: probe of %s failed on the hub's side (%s); it counts for "
                                    "no server", target.key, detail)
            self._hub_side_at = now
            return
        self._answered.add(target.key)
        if finding in (Finding.OK, Finding.NO_ANSWER):  # a TCP connection was made: our network works
            self._reached = [(now, target.key), *[r for r in self._reached if r[1] != target.key]][:2]
        if finding == Finding.OK:
            if target.first_failure is not None:
                self.logger.info("ec2hub health: %s answers again after %d failed probes", target.key,
                                 target.failures)
            target.failures, target.first_failure = 0, None
            self._failing.discard(target.key)
        else:
            COUNTERS.failures += 1
            if target.first_failure is None:
                target.first_failure = now
                self.logger.warning("ec2hub health: %s not answering: %s", target.key, detail)
            target.failures += 1
            self._failing.add(target.key)
        target.last, target.detail = finding, detail

    def _other_reached(self, key: str, now: float) -> bool:
        return any(k != key and now - t <= self.interval * 1.5 for t, k in self._reached)


def console_tail(output: str, lines: int = CONSOLE_LINES) -> list[str]:
    """The last ``lines`` lines of a console output the bootstrap printed (``ec2hub-notebook:``).

    Everything else on the console (kernel, cloud-init, other programs) is dropped: only the
    bootstrap's own lines are known to carry no secret.
    """
    kept = [line.strip() for line in output.splitlines() if line.strip().startswith(CONSOLE_PREFIX)]
    return kept[-lines:]


def ended_note(finding: str, console: list[str], when: str) -> str:
    """What the user reads about a server the hub ended because it stopped answering."""
    note = f"Your server stopped answering and was ended at {when}: {finding}."
    if console:
        note += " Last messages from its instance: " + " | ".join(console)
    return note


def announcement(user) -> str | None:
    """JupyterHub ``template_vars`` value for ``announcement_home`` and ``announcement_spawn``.

    JupyterHub 6 calls a callable template variable with the page's user; home.html and spawn.html
    show a string ``announcement_home``/``announcement_spawn`` as the page's announcement (HTML).
    Returns the escaped notes of the user's servers the hub ended for failing health probes, or
    None (the hub's own ``announcement``, if any, is then shown as usual).
    """
    if user is None:
        return None
    notes = []
    for spawner in user.all_spawners():
        note = getattr(spawner, "health_note", None)
        if note:
            name = f"Server {spawner.name!r}: " if spawner.name else ""
            notes.append(html.escape(name + note))
    return "<br>".join(notes) or None
