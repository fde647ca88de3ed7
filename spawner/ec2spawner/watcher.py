"""One DescribeInstances loop per hub, shared by every server's poll() and start().

JupyterHub polls every server every ``poll_interval`` seconds; a spawner that asked EC2 about its
own instance each time would make N calls per interval and hit EC2's DescribeInstances rate limit
at a few hundred servers. Instead one :class:`InstanceWatcher` per (hub, region, event loop) lists
every instance tagged ``ec2hub:hub=<hub_id>`` in one account and region (the hub's own, or a
target's: one watcher each) (all pages of 1,000, only the fields an InstanceView
holds parsed, in a worker thread; unchanged instances keep their view) and keeps the result as a
dictionary; ``poll()`` is a lookup in it. The loop runs every ``fast_interval`` seconds
while any spawn is in progress and every ``slow_interval`` seconds otherwise.

EC2's API is eventually consistent: an instance RunInstances just returned may be missing from
DescribeInstances for a few seconds
(https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html). An instance the
spawner launched is therefore reported as ``pending`` until it appears, for ``grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import ClassVar

from . import metrics
from .aws import Aws, InstanceView
from .loops import PerLoop
from .payloads import GONE_STATES, LIVE_STATES, hub_filters

log = logging.getLogger(__name__)


class InstanceWatcher:
    """A shared, periodically refreshed view of this hub's instances."""

    _registry: ClassVar[PerLoop[InstanceWatcher]] = PerLoop()

    def __init__(
        self,
        aws: Aws,
        hub_id: str,
        *,
        slow_interval: float = 30.0,
        fast_interval: float = 2.0,
        grace: float = 60.0,
        logger: logging.Logger | None = None,
    ):
        self.aws = aws
        self.hub_id = hub_id
        self.slow_interval = slow_interval
        self.fast_interval = fast_interval
        self.grace = grace
        self.log = logger or log
        self.snapshot: dict[str, InstanceView] = {}
        self.snapshot_started: float = float("-inf")  # monotonic time the last refresh began
        self.refreshes = 0
        self._expected: dict[str, tuple[float, InstanceView]] = {}
        self._claims: dict[str, object] = {}  # instance id -> who is adopting or ending it
        self._spawning = 0
        self._inflight: asyncio.Task | None = None
        self._inflight_started = 0.0
        self._loop_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._updated = asyncio.Condition()

    @classmethod
    def for_hub(cls, aws: Aws, hub_id: str, **kwargs) -> InstanceWatcher:
        """The watcher of (hub, account and region: ``aws.key``) on the running event loop,
        created on first use.

        Intervals given by later callers do not change an existing watcher: the first spawner's
        configuration wins (all spawners of a hub share one configuration).
        """
        watcher, _ = cls._registry.get_or_create((hub_id, aws.key), lambda: cls(aws, hub_id, **kwargs))
        watcher.ensure_running()
        return watcher

    @classmethod
    async def stop_all(cls) -> None:
        """Stop every watcher of the running loop (for tests and hub shutdown)."""
        for watcher in cls._registry.pop_all():
            await watcher.stop()

    # -- the loop -----------------------------------------------------------------------------

    def ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run(), name=f"ec2hub-watcher-{self.hub_id}")

    async def stop(self) -> None:
        metrics.forget_hub(self.hub_id, self.aws.key)
        for task in (self._loop_task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 (keep the last snapshot; try again next interval)
                self.log.warning("ec2hub watcher %s: DescribeInstances failed: %s", self.hub_id, error)
            interval = self.fast_interval if self._spawning else self.slow_interval
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)

    async def refresh(self) -> dict[str, InstanceView]:
        """Describe now, or join a describe already in flight."""
        if self._inflight is None or self._inflight.done():
            self._inflight_started = time.monotonic()
            self._inflight = asyncio.create_task(self._describe(self._inflight_started))
        return await asyncio.shield(self._inflight)

    async def fresh(self, since: float | None = None) -> dict[str, InstanceView]:
        """A snapshot from a describe that began at or after ``since`` (default: now)."""
        since = time.monotonic() if since is None else since
        while self.snapshot_started < since:
            if self._inflight is not None and not self._inflight.done():
                if self._inflight_started >= since:
                    return await asyncio.shield(self._inflight)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._inflight)
                continue
            await self.refresh()
        return self.snapshot

    async def _describe(self, started: float) -> dict[str, InstanceView]:
        snapshot = await self.aws.describe_instances(hub_filters(self.hub_id), self.snapshot)
        self.snapshot = snapshot
        self.snapshot_started = started
        self.refreshes += 1
        metrics.observe_instances(self.hub_id, snapshot, site=self.aws.key)  # once per cycle, not per poll
        now = time.monotonic()
        for iid, (since, _) in list(self._expected.items()):
            if (iid in snapshot and started >= since) or now - since > self.grace:
                del self._expected[iid]
        for iid in list(self._claims):  # nobody adopts an ended instance: its claim can go
            if iid not in snapshot or snapshot[iid].state in GONE_STATES:
                del self._claims[iid]
        async with self._updated:
            self._updated.notify_all()
        return snapshot

    # -- what spawners use --------------------------------------------------------------------

    def get(self, instance_id: str) -> InstanceView | None:
        """The instance as last seen; one just launched or started and not yet listed as such
        counts as what the call returned (pending)."""
        expected = self._expected.get(instance_id)
        if expected is not None:
            since, view = expected
            fresh = since < self.snapshot_started and instance_id in self.snapshot
            if not fresh and time.monotonic() - since <= self.grace:
                return view
        return self.snapshot.get(instance_id)

    def expect(self, view: InstanceView) -> None:
        """Register an instance RunInstances/StartInstances just returned."""
        self._expected[view.instance_id] = (time.monotonic(), view)

    def claim(self, instance_id: str, claimant: object) -> bool:
        """Claim an instance for adopting or ending it; False if someone else holds it.

        Synchronous on purpose: a check and a claim with no await between them cannot interleave
        with another coroutine of the loop.
        """
        holder = self._claims.get(instance_id)
        if holder is not None and holder is not claimant:
            return False
        self._claims[instance_id] = claimant
        return True

    def release(self, instance_id: str, claimant: object) -> None:
        if self._claims.get(instance_id) is claimant:
            del self._claims[instance_id]

    @contextlib.contextmanager
    def spawning(self):
        """Poll fast while the body runs (a spawn or a stop is waiting on a state change)."""
        self._spawning += 1
        self._wake.set()
        try:
            yield
        finally:
            self._spawning -= 1

    async def wait_for(
        self, instance_id: str, done: Callable[[InstanceView | None], bool], timeout: float
    ) -> InstanceView | None:
        """Wait until ``done(view)`` holds for the instance (``None`` = gone); bounded."""

        async def _wait():
            while True:
                view = self.get(instance_id)
                if done(view):
                    return view
                async with self._updated:
                    await self._updated.wait()

        with self.spawning():
            return await asyncio.wait_for(_wait(), timeout=timeout)

    def load_by_az(self) -> dict[str, int]:
        """Live (pending or running) instances of this hub per availability zone."""
        load: dict[str, int] = {}
        for view in self.snapshot.values():
            if view.state in LIVE_STATES:
                load[view.availability_zone] = load.get(view.availability_zone, 0) + 1
        return load
