"""The orphan sweeper: terminate instances (and delete secrets) that no server owns.

An instance can outlive its server: a hub killed between RunInstances and saving state, a stop()
that failed, a duplicate from a race. The sweeper lists this hub's instances (through the shared
watcher) and terminates every one that no running or pending server owns, once it is older than
``grace`` (default 10 minutes, from its launch time), and deletes secrets under the prefix whose
instance is gone. Each decision is one log line.

It runs inside the hub process, started once per (hub id, region, event loop) by the first
spawner that needs the watcher: at hub start when any server exists (the hub polls it), else at
the first spawn; then every ``interval`` seconds. In-process rather than a hub-managed service
because only the hub process knows the instance id of a spawn still in progress (JupyterHub saves
spawner state in its database only after ``start()`` returns, so the REST API cannot tell a
service about it); the launch-time grace covers the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from .aws import Aws, AwsError, ErrorKind, InstanceView
from .requests import (
    GONE_STATES,
    RESUMABLE_STATES,
    TAG_SERVER,
    TAG_USER,
    secret_list_filters,
)
from .watcher import InstanceWatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    instance_id: str
    terminate: bool
    reason: str


def find_orphans(
    instances: Mapping[str, InstanceView],
    owned: set[str],
    *,
    now: datetime,
    grace: float,
    keep_stopped: bool,
) -> list[Decision]:
    """What to do with each instance no server owns (owned and ended ones are not mentioned)."""
    decisions = []
    newest_stopped: dict[tuple[str, str], InstanceView] = {}
    if keep_stopped:
        for view in instances.values():
            if view.state in RESUMABLE_STATES and view.instance_id not in owned:
                key = (view.tags.get(TAG_USER, ""), view.tags.get(TAG_SERVER, ""))
                best = newest_stopped.get(key)
                if best is None or (view.launch_time or now) > (best.launch_time or now):
                    newest_stopped[key] = view
    kept = {v.instance_id for v in newest_stopped.values()}
    for iid, view in sorted(instances.items()):
        if iid in owned or view.state in GONE_STATES:
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
    _registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict] = weakref.WeakKeyDictionary()

    def __init__(
        self,
        aws: Aws,
        watcher: InstanceWatcher,
        *,
        hub_id: str,
        secret_prefix: str,
        owned: Callable[[], set[str]],
        grace: float = 600.0,
        interval: float = 300.0,
        keep_stopped: bool = False,
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
        self.log = logger or log
        self._task: asyncio.Task | None = None

    @classmethod
    def ensure(cls, aws: Aws, watcher: InstanceWatcher, **kwargs) -> OrphanSweeper:
        """The sweeper of (hub, region) on the running loop, started on first use."""
        sweepers = cls._registry.setdefault(asyncio.get_running_loop(), {})
        key = (kwargs["hub_id"], aws.region)
        if key not in sweepers:
            sweepers[key] = cls(aws, watcher, **kwargs)
            sweepers[key]._task = asyncio.create_task(sweepers[key]._run(), name=f"ec2hub-sweeper-{key[0]}")
        return sweepers[key]

    @classmethod
    async def stop_all(cls) -> None:
        for sweeper in cls._registry.pop(asyncio.get_running_loop(), {}).values():
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

    async def sweep_once(self) -> list[Decision]:
        snapshot = await self.watcher.fresh()
        owned = self.owned()  # after the describe: an instance launched meanwhile is owned or in grace
        now = datetime.now(timezone.utc)
        decisions = find_orphans(snapshot, owned, now=now, grace=self.grace, keep_stopped=self.keep_stopped)
        terminating = set()
        for d in decisions:
            view = snapshot[d.instance_id]
            who = f"user {view.tags.get(TAG_USER, '?')!r} server {view.tags.get(TAG_SERVER, '')!r}"
            if not d.terminate:
                self.log.info("ec2hub sweeper: keeping %s (%s): %s", d.instance_id, who, d.reason)
                continue
            self.log.warning("ec2hub sweeper: terminating orphan %s (%s): %s", d.instance_id, who, d.reason)
            try:
                await self.aws.call("ec2", "TerminateInstances", InstanceIds=[d.instance_id],
                                    ignore={ErrorKind.NOT_FOUND})
                terminating.add(d.instance_id)
            except AwsError as error:
                self.log.error("ec2hub sweeper: could not terminate %s: %s", d.instance_id, error)
        secrets = await self.aws.describe_parameters(secret_list_filters(self.secret_prefix))
        for name in find_orphan_secrets(secrets, self.secret_prefix, snapshot, owned | self.owned(),
                                        terminating, now=now, grace=self.grace):
            self.log.warning("ec2hub sweeper: deleting orphan secret %s", name)
            try:
                await self.aws.call("ssm", "DeleteParameter", Name=name, ignore={ErrorKind.NOT_FOUND})
            except AwsError as error:
                self.log.error("ec2hub sweeper: could not delete %s: %s", name, error)
        return decisions
