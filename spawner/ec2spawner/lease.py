"""The hub lease: one hub process at a time may change EC2 for a hub id.

During a hub replacement two hub processes can be alive with the same hub id (the old host not yet
gone, the new one already serving). Only the holder of the lease may launch, start, stop or
terminate instances, write or delete their secrets, or sweep; the other stands by and says so (log
lines, ``/hub/ec2hub/health`` answers 503, ``start()`` fails with a 503 that says why).

The lease is one item per hub id in a DynamoDB table (``requests.lease_acquire_params``): a
conditional PutItem takes it when it is free or expired, or renews it for its holder, with an
expiry ``duration`` seconds after the caller's clock. The holder renews it every ``renew_interval``
seconds and gives it up (a conditional DeleteItem) when the hub shuts down cleanly.

**Fencing by time.** A holder that cannot renew (DynamoDB unreachable, the hub's event loop
stalled) must stop acting before another hub may take over. :meth:`HubLease.holds` is true only
until ``margin`` seconds before the expiry of the last write DynamoDB accepted, measured on this
process's monotonic clock from the moment that write was *sent*; another hub takes over only after
the expiry on its own wall clock. So the two never act at once as long as the hosts' clocks differ
by less than ``margin`` (EC2 hosts keep time with the Amazon Time Sync Service, within
milliseconds) and an EC2 call begun just before ``holds()`` turned false ends within the rest
of ``margin``.

**A hub that stood by restarts when it takes over** (``on_takeover``, which the hub process sets:
:func:`restart_hub_process`). JupyterHub reads users and servers from its database at its start and
keeps them in memory; while another hub acted, that one started and stopped servers this process
never loaded (a server started through the old hub during a replacement had no route in this
hub's proxy, and this hub took it for stopped). So a lease taken after another holder was seen is
not acted on: it is kept for this host (not released at the shutdown), the process restarts, and
the next process of this host renews it at once and starts from the database as it is.

Every call goes through the seam (:meth:`ec2spawner.aws.Aws.call`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from tornado import web

from . import metrics
from . import payloads as req
from .aws import Aws, AwsError
from .loops import PerLoop

log = logging.getLogger(__name__)

# cloud-init records the EC2 instance id here on every instance it boots.
_CLOUD_INIT_INSTANCE_ID = Path("/var/lib/cloud/data/instance-id")
_HOLDER_ID: str | None = None


def default_holder_id() -> str:
    """This host's holder id: its EC2 instance id (cloud-init's record), else its host name.

    One id per host, not per process: a hub that systemd restarts on the same host (after a crash
    or a SIGKILL, which releases nothing) renews its own lease at once instead of standing by until
    the lease expires. Only one hub runs per host (its unit); during a replacement the old and the
    new hub are different instances, which is what the lease keeps apart.
    """
    global _HOLDER_ID
    if _HOLDER_ID is None:
        try:
            host = _CLOUD_INIT_INSTANCE_ID.read_text(encoding="utf-8").strip()
        except OSError:
            host = ""
        _HOLDER_ID = host or socket.gethostname()
    return _HOLDER_ID


# How long a hub that asked for its restart waits for its service manager before it ends itself.
RESTART_REQUEST_WAIT_S = 10.0


def restart_hub_process(previous: str, request: str = "") -> None:
    """``on_takeover`` of the hub process; nothing outside a running JupyterHub.

    With ``request`` (the hub host's ec2hub-hub-restart.path watches that file): create it, and
    systemd restarts ec2hub-hub.service at once, a clean stop and then the start. Without, if it
    cannot be written, or if this process still runs ``RESTART_REQUEST_WAIT_S`` later (nothing
    acted on it): SIGTERM to itself, JupyterHub's own clean shutdown (servers keep running:
    ``cleanup_servers`` is off), and its service manager starts it again (``Restart=always``,
    after its ``RestartSec``)."""
    from jupyterhub.app import JupyterHub

    if not JupyterHub.initialized():
        return
    if request:
        try:
            Path(request).write_text(f"{previous}\n", encoding="utf-8")
        except OSError as error:
            log.warning("ec2hub lease: cannot ask for a restart through %s (%s): ending this process",
                        request, error)
        else:
            log.warning("ec2hub lease: asked for a restart through %s", request)
            asyncio.get_running_loop().call_later(RESTART_REQUEST_WAIT_S, os.kill, os.getpid(), signal.SIGTERM)
            return
    os.kill(os.getpid(), signal.SIGTERM)


class LeaseError(RuntimeError):
    """This hub does not hold the lease, so it refused to change EC2."""


class HubLease:
    """The lease of one hub id for one holder, renewed by a task on the running loop."""

    _registry: ClassVar[PerLoop[HubLease]] = PerLoop()

    def __init__(
        self,
        aws: Aws,
        *,
        table: str,
        hub_id: str,
        holder: str,
        duration: float = 60.0,
        renew_interval: float = 15.0,
        margin: float = 15.0,
        on_takeover: Callable[[str], None] | None = None,
        logger: logging.Logger | None = None,
    ):
        if not 0 < renew_interval < duration - margin or margin <= 0:
            raise ValueError(f"lease timing: need 0 < renew_interval ({renew_interval}) < duration "
                             f"({duration}) - margin ({margin}), and margin > 0")
        self.aws = aws
        self.table = table
        self.hub_id = hub_id
        self.holder = holder
        self.duration = duration
        self.renew_interval = renew_interval
        self.margin = margin
        self.log = logger or log
        self._valid_until = 0.0  # monotonic: act only before this
        self._expires_at = 0.0  # wall clock: the expiry DynamoDB holds for us
        self.other_holder: str | None = None  # who holds it when we do not, as last read
        self.problem: str | None = None  # why we could not ask, as last seen
        self._settled = asyncio.Event()  # the first attempt has an answer
        self._task: asyncio.Task | None = None
        self._last_logged = ""
        self._release_on_cancel = True
        self._lapse: asyncio.TimerHandle | None = None
        self.on_takeover = on_takeover
        self._stood_by_for: str | None = None  # another holder seen while this one did not hold it
        self.restarting_from: str | None = None  # took the lease from this holder; restarting
        metrics.watch_lease(self)  # ec2hub_lease_held reads holds() at each scrape

    # -- registry --------------------------------------------------------------------------------

    @classmethod
    def ensure(cls, aws: Aws, **kwargs) -> HubLease:
        """The lease of (table, hub id, holder) on the running loop, its renewal task started."""
        key = (kwargs["table"], kwargs["hub_id"], kwargs["holder"])
        lease, created = cls._registry.get_or_create(key, lambda: cls(aws, **kwargs))
        if created:
            lease._task = asyncio.create_task(lease._run(), name=f"ec2hub-lease-{kwargs['hub_id']}")
        return lease

    @classmethod
    def find(cls, hub_id: str) -> HubLease | None:
        """This loop's lease of ``hub_id`` (the hub process has one), if started."""
        for lease in cls._registry.values():
            if lease.hub_id == hub_id:
                return lease
        return None

    @classmethod
    async def stop_all(cls, *, release: bool = True) -> None:
        """Stop every lease of the running loop (and give each up, unless ``release`` is false)."""
        for lease in cls._registry.pop_all():
            await lease.stop(release=release)

    # -- state -----------------------------------------------------------------------------------

    def holds(self) -> bool:
        """Whether this process may change EC2 now (see the module's "fencing by time")."""
        return time.monotonic() < self._valid_until

    def describe(self) -> str:
        """One line for logs, errors and the health check."""
        if self.restarting_from:
            return (f"this hub ({self.holder}) took the lease of hub {self.hub_id} from {self.restarting_from} after "
                    "standing by and restarts, so that the hub that acts starts from the hub database as it is now")
        if self.holds():
            return f"this hub ({self.holder}) holds the lease of hub {self.hub_id}"
        if self.problem:
            return f"this hub ({self.holder}) cannot hold the lease of hub {self.hub_id}: {self.problem}"
        if self.other_holder:
            return (f"this hub ({self.holder}) is standing by: another hub ({self.other_holder}) holds "
                    f"the lease of hub {self.hub_id}")
        return f"this hub ({self.holder}) does not hold the lease of hub {self.hub_id} yet"

    async def settled(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for the first attempt to be answered; return :meth:`holds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        return self.holds()

    # -- the calls -------------------------------------------------------------------------------

    async def attempt(self) -> bool:
        """Take or renew the lease once; return :meth:`holds`.

        Refused (another holder's lease runs): standing by at once. No answer (network, throttling,
        DynamoDB down): nothing changes, so a holder keeps acting only until its last expiry minus
        ``margin``. Taken after another holder was seen, with ``on_takeover``: not acted on, the
        process restarts (see the module's docstring).
        """
        if self.restarting_from:
            return False
        sent = time.monotonic()
        now = time.time()
        params = req.lease_acquire_params(table=self.table, hub_id=self.hub_id, holder=self.holder,
                                          now=now, duration=self.duration)
        try:
            await self.aws.call("dynamodb", "PutItem", **params)
        except AwsError as error:
            if error.code == "ConditionalCheckFailedException":
                self._valid_until = 0.0
                self.problem = None
                self.other_holder = await self._read_holder()
                if self.other_holder and self.other_holder != self.holder:
                    self._stood_by_for = self.other_holder
            elif error.code == "ResourceNotFoundException":
                self._valid_until = 0.0
                self.problem = (f"the lease table {self.table} does not exist (the stack creates it; "
                                "in the sandbox the emulator must have created it)")
            else:
                self.problem = f"DynamoDB refused the lease: {error}"
        except Exception as error:  # noqa: BLE001 (no answer: time alone ends what we hold)
            self.problem = f"DynamoDB did not answer ({error or type(error).__name__})"
        else:
            if self._stood_by_for and self.on_takeover is not None:
                return self._take_over(now)
            self._valid_until = sent + self.duration - self.margin
            self._expires_at = now + self.duration
            self.problem = self.other_holder = None
            self._schedule_lapse_log()
        self._settled.set()
        self._log_change()
        return self.holds()

    def _take_over(self, now: float) -> bool:
        """The lease is this host's now, but this process loaded the database while another hub
        acted: keep the lease for this host's next process and restart (``on_takeover``)."""
        self.restarting_from, self._stood_by_for = self._stood_by_for, None
        self._valid_until = 0.0
        self._expires_at = now + self.duration
        self._release_on_cancel = False  # the restarted process (the same holder) renews it at once
        self.problem = self.other_holder = None
        self._settled.set()
        self.log.warning("ec2hub lease: %s; changing nothing in EC2 meanwhile", self.describe())
        self.on_takeover(self.restarting_from)
        return False

    async def _read_holder(self) -> str | None:
        try:
            answer = await self.aws.call("dynamodb", "GetItem", **req.lease_read_params(
                table=self.table, hub_id=self.hub_id))
        except Exception:  # noqa: BLE001 (only for the log line)
            return None
        return ((answer or {}).get("Item") or {}).get("holder", {}).get("S")

    def _log_change(self) -> None:
        """One log line whenever what this hub may do changes, and at each failed renewal."""
        line = self.describe()
        if line != self._last_logged:
            if self.holds():
                self.log.warning("ec2hub lease: %s (expires %s UTC)", line,
                                 time.strftime("%H:%M:%S", time.gmtime(self._expires_at)))
            else:
                self.log.warning("ec2hub lease: %s; changing nothing in EC2", line)
            self._last_logged = line
        elif self.problem and self.holds():
            self.log.warning("ec2hub lease: renewal failed (%s); acting for %.0f s more at most",
                             self.problem, self._valid_until - time.monotonic())

    def _schedule_lapse_log(self) -> None:
        """Log the moment the holding ends, even if the renewal in flight never answers."""
        if self._lapse is not None:
            self._lapse.cancel()
        loop = asyncio.get_running_loop()
        self._lapse = loop.call_later(max(0.0, self._valid_until - time.monotonic()) + 0.01, self._log_change)

    async def _run(self) -> None:
        while not self.restarting_from:  # restarting: the lease is left to this host's next process
            try:
                await self.attempt()
                await asyncio.sleep(self.renew_interval)
            except asyncio.CancelledError:
                # A hub shutdown cancels every task: give the lease up in a worker thread of the
                # seam (shielded: it runs to its end, as a spawn's cleanup does), so the next hub
                # need not wait for the expiry.
                if self.holds() and self._release_on_cancel:
                    self._valid_until = 0.0
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(self.aws.in_thread(self._release_blocking))
                raise
            except Exception:
                self.log.exception("ec2hub lease: renewal failed; retrying in %.0f s", self.renew_interval)
                await asyncio.sleep(self.renew_interval)

    def _release_blocking(self) -> None:
        try:
            self.aws.call_blocking("dynamodb", "DeleteItem", **req.lease_release_params(
                table=self.table, hub_id=self.hub_id, holder=self.holder))
            self.log.info("ec2hub lease: released the lease of hub %s", self.hub_id)
        except Exception as error:  # noqa: BLE001 (it expires by itself)
            self.log.warning("ec2hub lease: could not release the lease of hub %s (%s); it expires "
                             "by itself", self.hub_id, error)

    async def stop(self, *, release: bool = True) -> None:
        """Stop renewing; give the lease up (conditional: only if still ours) unless told not to."""
        if self._lapse is not None:
            self._lapse.cancel()
        if self._task is not None:
            self._release_on_cancel = False  # released below, awaited, if asked for
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if release and not self.restarting_from:  # restarting: the lease is this host's next process's
            self._valid_until = 0.0
            await self.aws.in_thread(self._release_blocking)
        else:
            self._valid_until = 0.0  # stopped renewing: act no more


class LeaseHealthHandler(web.RequestHandler):
    """``GET /hub/ec2hub/health``: 200 only while this hub holds the lease (or runs without one).

    For the load balancer's health check: a standing-by hub answers 503, so traffic goes to the
    hub that may act. No authentication (like JupyterHub's own ``/hub/health``); the body names
    no secret, only the hub and holder ids.
    """

    def initialize(self, hub_id: str, lease_table: str | None) -> None:
        self.hub_id = hub_id
        self.lease_table = lease_table

    def get(self) -> None:
        lease = HubLease.find(self.hub_id) if self.lease_table else None
        if not self.lease_table:
            body = {"lease": "none", "detail": "no lease table configured: this hub acts alone"}
        elif lease is None:
            body = {"lease": "starting", "detail": "the lease is not asked for yet"}
        else:
            body = {"lease": "held" if lease.holds() else "standby", "holder": lease.holder,
                    "detail": lease.describe()}
        self.set_status(200 if body["lease"] in ("held", "none") else 503)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))
