"""The orphan sweeper: terminate instances (and delete secrets) that no server owns.

An instance can outlive its server: a hub killed between RunInstances and saving state, a stop()
that failed, a duplicate from a race. Ownership is what the hub database knows (see
:class:`Ownership`): every instance named in a spawner state saved there (running, or stopped and
kept for resume) is owned whether or not a Spawner object is loaded, and so is every spawn in
flight in this process. The sweeper lists this hub's notebook instances (through the shared
watcher; the hub host is never listed), terminates every one nobody owns once it is older than
``grace`` (default 10 minutes, from its launch time), and deletes secrets under the prefix whose
instance is gone. Each decision is one log line.

A sweep and an adoption of the same instance cannot race: right before TerminateInstances the
sweeper claims the instance on the watcher (``start()`` skips an instance claimed by the sweeper,
and the sweeper skips one a start claimed) and asks for the ownership again.

It runs inside the hub process, started with the hub (``ec2spawner.spawner.start_sweeper_with_hub``,
called from ``hubconfig.apply_settings``), once per (hub id, account and region, event loop): the
hub's own and each target's (``EC2Spawner.targets``), each through its own seam and watcher; then every
``interval`` seconds. In-process rather than a hub-managed service because only the hub process
knows the instance id of a spawn still in progress (JupyterHub saves spawner state in its database
only after ``start()`` returns, so the REST API cannot tell a service about it); the launch-time
grace covers the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from . import metrics
from .aws import Aws, AwsError, ErrorKind, InstanceView
from .lease import HubLease
from .loops import PerLoop
from .payloads import (
    GONE_STATES,
    RESUMABLE_STATES,
    TAG_NOTEBOOK_MARKER,
    TAG_SERVER,
    TAG_USER,
    secret_list_filters,
)
from .watcher import InstanceWatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ownership:
    """Who owns what, as the hub database and this process know it.

    ``instance_ids``: instances named in a saved spawner state (running or kept stopped) or by a
    spawn in flight. ``servers``: the (user, server) pairs that exist in the database, spelled as
    the tags spell them; a stopped instance of a server that no longer exists is not kept.
    """

    instance_ids: frozenset[str] = frozenset()
    servers: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, instance_ids, servers=()) -> Ownership:
        return cls(frozenset(instance_ids), frozenset(servers))


@dataclass(frozen=True)
class Decision:
    instance_id: str
    terminate: bool
    reason: str


def find_orphans(
    instances: Mapping[str, InstanceView],
    ownership: Ownership,
    *,
    now: datetime,
    grace: float,
    keep_stopped: bool,
) -> list[Decision]:
    """What to do with each instance no server owns (owned and ended ones are not mentioned).

    With ``keep_stopped``, the newest stopped instance of a server that exists in the database is
    kept even if no saved state names it (an instance stopped before states named kept instances).
    Instances without the notebook marker tag (the hub host) are never candidates.
    """
    owned = ownership.instance_ids
    decisions = []
    newest_stopped: dict[tuple[str, str], InstanceView] = {}
    if keep_stopped:
        for view in instances.values():
            key = (view.tags.get(TAG_USER, ""), view.tags.get(TAG_SERVER, ""))
            if view.state in RESUMABLE_STATES and view.instance_id not in owned and key in ownership.servers:
                best = newest_stopped.get(key)
                if best is None or (view.launch_time or now) > (best.launch_time or now):
                    newest_stopped[key] = view
    kept = {v.instance_id for v in newest_stopped.values()}
    for iid, view in sorted(instances.items()):
        if iid in owned or view.state in GONE_STATES or TAG_NOTEBOOK_MARKER not in view.tags:
            continue
        if iid in kept:
            decisions.append(Decision(iid, False, f"{view.state}, kept for its server's next start"))
            continue
        age = (now - view.launch_time).total_seconds() if view.launch_time else grace + 1
        if age < grace:
            decisions.append(Decision(iid, False, f"{view.state}, no owner yet, launched {age:.0f} s ago (grace {grace:.0f} s)"))
        else:
            decisions.append(Decision(iid, True, f"{view.state}, no server owns it, launched {age:.0f} s ago"))
    return decisions


def find_orphan_secrets(
    secrets: Mapping[str, datetime | None],
    prefix: str,
    instances: Mapping[str, InstanceView],
    owned: set[str],
    terminating: set[str],
    *,
    now: datetime,
    grace: float,
) -> list[str]:
    """Secrets whose instance no server owns and is gone, being terminated, or never appeared."""
    orphans = []
    for name, modified in sorted(secrets.items()):
        iid = name[len(prefix):]
        if iid in owned:
            continue
        view = instances.get(iid)
        age = (now - modified).total_seconds() if modified else grace + 1
        if iid in terminating or (view is not None and view.state in GONE_STATES) or (view is None and age >= grace):
            orphans.append(name)
    return orphans


class OrphanSweeper:
    _registry: ClassVar[PerLoop[OrphanSweeper]] = PerLoop()

    def __init__(
        self,
        aws: Aws,
        watcher: InstanceWatcher,
        *,
        hub_id: str,
        secret_prefix: str,
        owned: Callable[[], Ownership],
        grace: float = 600.0,
        interval: float = 300.0,
        keep_stopped: bool = False,
        lease: HubLease | None = None,
        logger: logging.Logger | None = None,
    ):
        self.aws = aws
        self.watcher = watcher
        self.hub_id = hub_id
        self.secret_prefix = secret_prefix
        self.owned = owned
        self.grace = grace
        self.interval = interval
        self.keep_stopped = keep_stopped
        self.lease = lease
        self.log = logger or log
        self._task: asyncio.Task | None = None

    @classmethod
    def ensure(cls, aws: Aws, watcher: InstanceWatcher, **kwargs) -> OrphanSweeper:
        """The sweeper of (hub, account and region: ``aws.key``) on the running loop, started on first use."""
        sweeper, created = cls._registry.get_or_create(
            (kwargs["hub_id"], aws.key), lambda: cls(aws, watcher, **kwargs))
        if created:
            sweeper._task = asyncio.create_task(sweeper._run(), name=f"ec2hub-sweeper-{kwargs['hub_id']}")
        return sweeper

    @classmethod
    async def stop_all(cls) -> None:
        for sweeper in cls._registry.pop_all():
            if sweeper._task is not None:
                sweeper._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sweeper._task

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("ec2hub sweeper %s: sweep failed; next in %.0f s", self.hub_id, self.interval)
            await asyncio.sleep(self.interval)

    def _standing_by(self, what: str) -> bool:
        """True (and one log line) if this hub does not hold the lease: then it changes nothing."""
        if self.lease is None or self.lease.holds():
            return False
        self.log.warning("ec2hub sweeper: %s: %s", what, self.lease.describe())
        return True

    async def sweep_once(self) -> list[Decision]:
        """One sweep: terminate orphans older than the grace, delete orphan secrets.

        If the ownership cannot be read (the hub database failed), ``owned`` raises and nothing
        is terminated. Without the hub lease nothing is swept (another hub's database owns what
        this one may not know), and a lease lost during the sweep ends it before its next call.
        """
        if self.lease is not None:
            await self.lease.settled(10.0)  # the hub's first answer from the lease table
        if self._standing_by("not sweeping"):
            return []
        snapshot = await self.watcher.fresh()
        # After the describe: an instance launched meanwhile is owned or in grace.
        ownership = self.owned()
        now = datetime.now(UTC)
        decisions = find_orphans(snapshot, ownership, now=now, grace=self.grace, keep_stopped=self.keep_stopped)
        terminating = set()
        for d in decisions:
            view = snapshot[d.instance_id]
            who = f"user {view.tags.get(TAG_USER, '?')!r} server {view.tags.get(TAG_SERVER, '')!r}"
            if not d.terminate:
                self.log.info("ec2hub sweeper: keeping %s (%s): %s", d.instance_id, who, d.reason)
                metrics.SWEEP_ACTIONS.labels("kept").inc()
                continue
            # Claim, then ask again, with no await between the question and the call: a start()
            # that adopted the instance since the decision owns it now, and one that has not yet
            # cannot adopt it once claimed.
            if not self.watcher.claim(d.instance_id, self):
                self.log.info("ec2hub sweeper: keeping %s (%s): a start is adopting it", d.instance_id, who)
                continue
            if d.instance_id in self.owned().instance_ids:
                self.watcher.release(d.instance_id, self)
                self.log.info("ec2hub sweeper: keeping %s (%s): owned since the sweep began", d.instance_id, who)
                continue
            if self._standing_by(f"not terminating {d.instance_id}, sweep ended"):
                self.watcher.release(d.instance_id, self)
                return decisions
            # The stack's "instances with no owner" alarm counts this line (metrics.ORPHAN_MARK).
            self.log.warning("%s %s (%s): %s", metrics.ORPHAN_MARK, d.instance_id, who, d.reason)
            try:
                await self.aws.call("ec2", "TerminateInstances", InstanceIds=[d.instance_id],
                                    ignore={ErrorKind.NOT_FOUND})
                terminating.add(d.instance_id)
                metrics.SWEEP_ACTIONS.labels("terminated").inc()
            except AwsError as error:
                self.watcher.release(d.instance_id, self)
                self.log.error("ec2hub sweeper: could not terminate %s: %s", d.instance_id, error)
                metrics.SWEEP_ACTIONS.labels("terminate_failed").inc()
        secrets = await self.aws.describe_parameters(secret_list_filters(self.secret_prefix))
        owned_now = ownership.instance_ids | self.owned().instance_ids
        for name in find_orphan_secrets(secrets, self.secret_prefix, snapshot, owned_now,
                                        terminating, now=now, grace=self.grace):
            if self._standing_by(f"not deleting secret {name}, sweep ended"):
                return decisions
            self.log.warning("ec2hub sweeper: deleting orphan secret %s", name)
            try:
                await self.aws.call("ssm", "DeleteParameter", Name=name, ignore={ErrorKind.NOT_FOUND})
                metrics.SWEEP_ACTIONS.labels("secret_deleted").inc()
            except AwsError as error:
                self.log.error("ec2hub sweeper: could not delete %s: %s", name, error)
        metrics.SWEEPS.inc()
        self.log.info("ec2hub sweeper: swept %d instances of hub %s: %d owned, %d terminated",
                      len(snapshot), self.hub_id, len(ownership.instance_ids & snapshot.keys()), len(terminating))
        return decisions
