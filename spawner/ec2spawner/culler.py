"""Per-class idle and age limits, enforced in the hub process (docs/ARCHITECTURE.md §17).

jupyterhub-idle-culler applies one timeout to every server. Classes differ (a GPU box idle for
ten minutes costs more than a small one idle for an hour; a teaching class may cap a server's
age), and the spawner is the part that knows each server's class. So one :class:`ServerCuller`
per hub, started with the hub like the sweeper, checks every running EC2Spawner server each
``cull_interval`` against :meth:`EC2Spawner.server_limits` and stops the ones past a limit the
way the REST API's ``DELETE /users/:name/servers/:server`` does (the proxy route, then
``User.stop``). The hub-wide ``idle_timeout`` (settings ``idle_timeout_s``, 3600 s) applies to a
class that sets none, as the idle culler's ``--timeout`` did.

Idle is measured on ``orm.Spawner.last_activity``: what JupyterHub records from the proxy's
routes (browser traffic), jupyterhub-singleuser's reports, and the instance's activity agent
(``bootstrap/ec2hub_bootstrap/activity.py``), which posts while a kernel is busy, the CPU or a
GPU works, or a terminal is used.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

from .loops import PerLoop


def cull_reason(*, now: datetime, started: datetime | None, last_activity: datetime | None,
                idle_timeout: int, max_age: int) -> str | None:
    """Why a running server should stop now, or None. Times are naive UTC, as JupyterHub's
    database keeps them; a limit of 0 is no limit; no recorded activity counts from the start."""
    if max_age and started is not None and now - started >= timedelta(seconds=max_age):
        return f"ran {int((now - started).total_seconds())} s, past its max_age of {max_age} s"
    since = last_activity or started
    if idle_timeout and since is not None and now - since >= timedelta(seconds=idle_timeout):
        return f"idle {int((now - since).total_seconds())} s, past its idle_timeout of {idle_timeout} s"
    return None


class ServerCuller:
    """Stops this hub's servers that are past their class's idle_timeout or max_age."""

    _registry: PerLoop[ServerCuller] = PerLoop()

    def __init__(self, app: Any, *, interval: float, log: Any) -> None:
        self.app = app
        self.interval = interval
        self.log = log
        self.stopped: list[tuple[str, str, str]] = []  # (user, server, reason), for the log and tests
        self._task: asyncio.Task | None = None

    @classmethod
    def start_with(cls, app: Any, *, interval: float, log: Any) -> ServerCuller:
        """The running loop's culler for ``app``, started on first use."""
        culler, created = cls._registry.get_or_create(id(app), lambda: cls(app, interval=interval, log=log))
        if created:
            culler._task = asyncio.get_running_loop().create_task(culler._run(), name="ec2hub-culler")
            log.info("ec2hub culler: checking servers' idle_timeout and max_age every %.0f s", interval)
        return culler

    @classmethod
    async def stop_all(cls) -> None:
        for culler in cls._registry.pop_all():
            if culler._task is not None:
                culler._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await culler._task

    async def _run(self) -> None:
        while True:
            try:
                await self.cull_once()
            except Exception:  # one failed round must not end the culling
                self.log.exception("ec2hub culler: a round failed")
            await asyncio.sleep(self.interval)

    async def cull_once(self) -> list[tuple[str, str, str]]:
        """One round: stop every ready server past a limit; returns what it stopped."""
        from jupyterhub.utils import utcnow

        from .spawner import EC2Spawner

        now = utcnow(with_tz=False)
        due = []
        for user in list(self.app.users.values()):
            for name, spawner in list(user.spawners.items()):
                if not isinstance(spawner, EC2Spawner) or not spawner.ready or spawner.pending:
                    continue
                idle, age = spawner.server_limits()
                orm_spawner = spawner.orm_spawner
                reason = cull_reason(now=now, started=orm_spawner.started, last_activity=orm_spawner.last_activity,
                                     idle_timeout=idle, max_age=age)
                if reason:
                    due.append((user, name, spawner, reason))
        done = await asyncio.gather(*(self._stop(*item) for item in due))
        return [d for d in done if d is not None]

    async def _stop(self, user: Any, name: str, spawner: Any, reason: str) -> tuple[str, str, str] | None:
        self.log.info("ec2hub culler: stopping %s (class %s): %s", spawner._log_name, spawner.instance_class, reason)
        # As BaseHandler.stop_single_user: pending before anything async, the route, then the server.
        spawner._stop_pending = True
        try:
            await self.app.proxy.delete_user(user, name)
            await user.stop(name)
        except Exception:
            self.log.exception("ec2hub culler: stopping %s failed", spawner._log_name)
            return None
        finally:
            spawner._stop_pending = False
        entry = (user.name, name, reason)
        self.stopped.append(entry)
        return entry
