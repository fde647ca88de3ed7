"""EC2Spawner: each JupyterHub server on its own EC2 instance, launched from its class's template.

The spawner maps JupyterHub's Spawner contract onto AWS calls; the calls themselves live in
:mod:`ec2spawner.aws`, the payloads in :mod:`ec2spawner.payloads`, the shared instance view in
:mod:`ec2spawner.watcher`, orphan cleanup in :mod:`ec2spawner.sweeper` and the options in
:mod:`ec2spawner.options`. ``ec2spawner.hubconfig.apply_settings`` sets every trait below from the
hub settings document.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import random
import time
import uuid
import weakref
from datetime import UTC, datetime
from typing import ClassVar

import sqlalchemy.orm
from jupyterhub import orm
from jupyterhub.spawner import Spawner, SpawnException
from jupyterhub.utils import url_path_join
from traitlets import (
    Bool,
    Callable,
    Dict,
    Enum,
    Float,
    Integer,
    List,
    Unicode,
    default,
    validate,
)

from . import health, metrics
from . import options as opts
from . import payloads as req
from . import spend as spend_
from .aws import AssumedRole, Aws, AwsError, ErrorKind, InstanceView
from .culler import ServerCuller
from .lease import HubLease, LeaseError, default_holder_id, restart_hub_process
from .settings import ClassSettings, TargetSettings
from .sweeper import OrphanSweeper, Ownership
from .watcher import InstanceWatcher

# What EC2's StateReason codes mean to a user whose instance ended while starting
# (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html).
_STATE_REASONS = {
    "Server.SpotInstanceTermination": (
        "spot-interruption",
        "EC2 reclaimed the spot instance (spot interruption). Try again, or pick an on-demand class.",
    ),
    "Server.SpotInstanceShutdown": (
        "spot-interruption",
        "EC2 reclaimed the spot instance (spot interruption). Try again, or pick an on-demand class.",
    ),
    "Server.InsufficientInstanceCapacity": (
        "capacity",
        "EC2 ran out of capacity for this instance type while starting it. Try again in a few minutes.",
    ),
    "Client.UserInitiatedShutdown": (
        "terminated",
        "The instance was stopped or terminated outside JupyterHub while it was starting.",
    ),
    "Client.InstanceInitiatedShutdown": (
        "instance-shutdown",
        "The instance shut itself down while booting; an administrator should check its console log.",
    ),
}


class TargetUnknown(LookupError):
    """A server's state names a target the hub's settings no longer have."""


# Most seconds the first poll() after a hub restart waits for EC2 before it reports "running".
_FIRST_POLL_WAIT = 10.0

# The per-server traits get_state/load_state/clear_state carry (declared on EC2Spawner).
# ``kept_instance_id`` (stop_mode=stop: the stopped instance kept for the next start) survives
# clear_state, so the hub database names every instance a server owns, running or kept.
# ``health_note`` (why the hub ended the server last time) survives it too: the user reads it at
# the next visit of the home page and the next spawn.
# ``target`` (the catalog target the instances are in; absent: the hub's own account and region,
# as in every state saved before targets existed) survives too: a kept instance is in that account.
_STATE_KEYS = ("instance_id", "instance_class", "subnet_id", "template_version", "attempt", "kept_instance_id",
               "health_note", "target")
_KEPT_ACROSS_STOPS = ("kept_instance_id", "health_note", "target")


async def _apply_user_options(spawner: EC2Spawner, user_options: dict) -> None:
    """``Spawner.apply_user_options`` default: validate and check the budgets before anything is
    launched, then apply the class's policies (its limit, its ``start_timeout``) and record the
    class in the options.

    JupyterHub runs this hook (it may be async) for form and REST spawns alike, after
    ``clear_state`` and before it reads ``start_timeout``, and turns an ``HTTPError`` into a 4xx
    response carrying its message.
    """
    cls = spawner.resolve_class(user_options)
    spawner.check_class_limit(cls)
    spawner.instance_class = cls.slug
    await spawner.check_budget()
    spawner.start_timeout = cls.start_timeout or spawner.configured_start_timeout
    # Saved as this server's options (the admin page's Profile column reads "profile").
    spawner.user_options = opts.recorded_options(user_options, cls)
    if spawner.orm_spawner is not None:
        spawner.orm_spawner.user_options = spawner.user_options


async def _options_form(spawner: EC2Spawner) -> str:
    return await spawner.render_options_form()


class EC2Spawner(Spawner):
    """Run each server on its own EC2 instance, launched from its class's launch template."""

    # Every spawner object of the process; the sweeper asks them which instances are owned.
    _live: ClassVar[weakref.WeakSet[EC2Spawner]] = weakref.WeakSet()
    _type_facts: ClassVar[dict[tuple[str, str], opts.TypeFacts]] = {}

    region = Unicode(help="""AWS region of the hub and its notebook instances.""").tag(config=True)

    hub_id = Unicode(
        help="""This hub's id (the CloudFormation stack name).

        Every instance is tagged ``ec2hub:hub=<hub_id>``; the watcher and the sweeper only see
        instances with this tag.
        """
    ).tag(config=True)

    classes = List(
        help="""Instance classes: the hub settings' ``classes`` (dicts of
        :class:`ec2spawner.settings.ClassSettings` fields, each with its ``launch_template_id``).
        """
    ).tag(config=True)

    subnets = Dict(
        value_trait=Unicode(),
        help="""Availability zone -> private subnet id for notebooks.

        A new server goes to the AZ with the fewest of this hub's live instances (settings order
        on a tie); on InsufficientInstanceCapacity the next AZ is tried, then the next instance type.
        """,
    ).tag(config=True)

    secret_prefix = Unicode(
        help="""SSM parameter name prefix of per-server secrets: ``<secret_prefix><instance-id>``."""
    ).tag(config=True)

    targets = Dict(
        help="""Name -> another AWS account and region classes launch in: the hub settings'
        ``targets`` (dicts of :class:`ec2spawner.settings.TargetSettings` fields).

        A server of a class with ``target: <name>`` has its instance, its secret and every EC2
        and SSM call in that account and region, made with the credentials of the target's
        ``role_arn``, which the hub assumes with its ``external_id`` (refreshed before they
        expire); its ``subnets`` and ``secret_prefix`` replace the hub's own. One watcher and one
        sweeper run per target. Its homes are the instance's own disk (no EFS across accounts).
        Empty: every class launches in the hub's own account and region.
        """,
    ).tag(config=True)

    efs_id = Unicode(
        None, allow_none=True, help="""EFS file system id for homes (tag ``ec2hub:efs``); None: no EFS.

        Each user's home is reached only through that user's access point on it, which the
        spawner makes before the first launch (tag ``ec2hub:efs-access-point``)."""
    ).tag(config=True)

    notebook_port = Integer(8888, help="""Port jupyterhub-singleuser listens on, on the instance.""").tag(
        config=True
    )

    server_url_template = Unicode(
        "http://{private_ip}:{port}",
        help="""URL the hub and proxy use to reach a server.

        Expands ``{private_ip}``, ``{public_ip}``, ``{private_dns}``, ``{public_dns}``,
        ``{instance_id}`` and ``{port}`` (``notebook_port``). The default suits a hub in the same
        VPC; ``http://{public_ip}:{port}`` suits a hub outside it.
        """,
    ).tag(config=True)

    stop_mode = Enum(
        ["terminate", "stop"],
        "terminate",
        help="""What stopping a server does to its instance.

        ``terminate``: the instance and its root volume are deleted. ``stop``: the instance is
        stopped (root volume kept) and started again on the user's next spawn of the same server
        and class, unless the class's launch template default version changed since, in which case
        it is replaced. Spot instances are always terminated (EC2 cannot stop one-time spot).
        """,
    ).tag(config=True)

    fast_poll_interval = Float(
        2.0,
        help="""Seconds between DescribeInstances while any spawn or stop is waiting (``poll_interval`` otherwise).""",
    ).tag(config=True)

    launch_visibility_grace = Float(
        60.0,
        help="""Seconds an instance RunInstances returned counts as pending while DescribeInstances
        does not list it yet (EC2 is eventually consistent).""",
    ).tag(config=True)

    stop_timeout = Float(
        180.0, help="""Most seconds ``stop()`` waits for the instance to be stopped or terminated."""
    ).tag(config=True)

    sweep_orphans = Bool(
        True,
        help="""Run the orphan sweeper in the hub process (once per hub id and region).

        It starts with the hub (:func:`start_sweeper_with_hub`, called by
        ``ec2spawner.hubconfig.apply_settings``), not at the first spawn.
        """,
    ).tag(config=True)

    orphan_grace = Float(
        600.0,
        help="""Seconds after launch before an instance no server owns is terminated by the sweeper.""",
    ).tag(config=True)

    sweep_interval = Float(300.0, help="""Seconds between orphan sweeps.""").tag(config=True)

    lease_table = Unicode(
        None,
        allow_none=True,
        help="""DynamoDB table of the hub lease (the settings' ``lease_table``; the stack makes it).

        Only the hub process holding this hub id's lease launches, starts, stops or terminates
        instances, writes or deletes secrets, or sweeps (:mod:`ec2spawner.lease`); another one
        stands by: ``start()`` fails with a 503, ``stop()`` changes nothing and leaves the
        instance named in the hub database, the sweeper skips its sweeps. None: no lease, this
        hub always acts (one hub process per hub id, as in tests).
        """,
    ).tag(config=True)

    lease_holder = Unicode(
        help="""This hub's holder id in the lease table.

        Default: the hub host's EC2 instance id (else its host name): one holder per host, so a
        hub restarted on the same host after a crash takes its lease back at once; hubs on two
        hosts (a replacement under way) are two holders.
        """
    ).tag(config=True)

    lease_duration = Float(
        60.0,
        help="""Seconds a taken or renewed lease lasts. Another hub takes over this long after the
        holder's last renewal (or at once when it gave the lease up at a clean shutdown).""",
    ).tag(config=True)

    lease_renew_interval = Float(
        15.0,
        help="""Seconds between renewals; less than ``lease_duration - lease_margin``, so that a
        renewal or two may fail without the holder stopping.""",
    ).tag(config=True)

    lease_margin = Float(
        15.0,
        help="""Seconds before the lease's expiry at which a holder that could not renew stops
        changing EC2 (fencing by time): covers clock skew between hub hosts and an EC2 call
        begun just before.""",
    ).tag(config=True)

    lease_restart_on_takeover = Bool(
        False,
        help="""Restart the hub process when it takes the lease after standing by (another holder
        was seen): JupyterHub loaded its users and servers while another hub acted, so the hub
        that acts starts again from the database (:mod:`ec2spawner.lease`). The hub's config sets
        it (``hubconfig.apply_settings``); off for spawners outside a hub process.""",
    ).tag(config=True)

    lease_restart_request = Unicode(
        "",
        help="""A file whose creation makes the hub's service manager restart the hub at once (the
        hub host's ec2hub-hub-restart.path; the host's config sets it), used by
        ``lease_restart_on_takeover``. Empty: the hub ends itself and its service manager starts
        it again after its restart delay (:func:`ec2spawner.lease.restart_hub_process`).""",
    ).tag(config=True)

    lease_wait = Float(
        10.0,
        help="""Most seconds ``start()`` waits for the hub's first answer from the lease table after
        the hub started, before it refuses the spawn.""",
    ).tag(config=True)

    # EC2 boot plus first-boot installs take minutes, not the 60 s/30 s of a local process.
    start_timeout = Integer(
        600,
        help="""Seconds from the spawn request until ``start()`` returns: until the server answered
        (``wait_for_server``; the instance's launch, its boot, its user data and jupyter-server's
        own start), or until the instance is running without it.""",
    ).tag(config=True)

    http_timeout = Integer(
        300,
        help="""Seconds JupyterHub waits for the server's HTTP answer once ``start()`` returned, or
        once a restarted hub found it running.

        With ``wait_for_server`` the server has answered already and JupyterHub's first probe
        passes; this still covers a boot a hub restart interrupted (the state is saved once the
        instance runs, and the restarted hub waits for that server), and the whole boot without it.
        """,
    ).tag(config=True)

    wait_for_server = Bool(
        True,
        help="""Whether ``start()`` returns only once the server answers, or as soon as the instance runs.

        JupyterHub's own readiness check after ``start()`` (``User._wait_up``) probes with an
        exponential backoff (0.2 s doubling up to 5 s, with random jitter): a server that comes up
        during a boot is seen up to seconds late. Waiting here, the spawner probes the server's
        URL every ``ready_interval`` (each probe as :func:`ec2spawner.health.probe`, bounded by
        ``health_timeout``, answered by any status below 500 as JupyterHub wants it), fails the
        start at once if EC2 reports the instance no longer running, and ``start_timeout`` bounds
        the whole start. batchspawner also returns from ``start()`` only once its server has
        started. False: the instance's ``running`` ends ``start()``, ``http_timeout`` the boot.
        """,
    ).tag(config=True)

    ready_interval = Float(
        0.25,
        help="""Seconds between two probes of a booting server while ``start()`` waits for its first answer.

        A probe of a booting instance is refused at once (or unanswered until its network is up),
        so a server that starts to listen is seen within this many seconds: 4 TCP connections a
        second per booting server, none once it answered.
        """,
    ).tag(config=True)

    health_check = Bool(
        True,
        help="""Probe each running server over HTTP and end it when it stops answering.

        ``poll()`` reports a server whose instance runs but whose ``jupyterhub-singleuser`` no
        longer answers as stopped, ends its instance (terminated, or stopped and kept with
        ``stop_mode = "stop"``) and deletes its secret; the user reads why on the home page and
        at the next spawn. See :mod:`ec2spawner.health` for what a probe is.
        """,
    ).tag(config=True)

    health_interval = Float(
        30.0,
        help="""Seconds between two probes of one server (the probes of all servers are spread over it).

        30 s is JupyterHub's ``poll_interval`` default: a thousand servers are ~33 probes a second.
        """,
    ).tag(config=True)

    health_timeout = Float(
        10.0,
        help="""Most seconds one probe waits to connect and for the HTTP status line.

        jupyter-server answers ``/api`` in milliseconds even while kernels are busy (they are other
        processes); 10 s also covers TCP's SYN retransmissions after a lost packet (1 s, then 2 s).
        """,
    ).tag(config=True)

    health_window = Float(
        180.0,
        help="""Seconds every probe of a server must have failed before it is declared dead.

        Longer than the server's own recovery: its unit restarts a crashed server after 5 s, and
        a reboot of an EC2 instance (which EC2 reports as ``running`` throughout) takes 30 to 90 s
        plus the server's start. At the 30 s interval, 180 s is seven failed probes in a row; the
        instance then bills ~3.5 minutes, not until the idle culler's hour.
        """,
    ).tag(config=True)

    health_failures = Integer(
        3,
        help="""Fewest consecutive failed probes before a server is declared dead, whatever the window.

        One dropped packet or one slow answer is one failure; a server declared dead has failed at
        least this many probes in a row over at least ``health_window`` seconds.
        """,
    ).tag(config=True)

    spend_table = Unicode(
        None,
        allow_none=True,
        help="""DynamoDB table of the spend ledger (:mod:`ec2spawner.spend`; the stack makes it).

        None: spend is not recorded, the form shows prices only, and budgets are not enforced.
        """,
    ).tag(config=True)

    group_budgets_usd = Dict(
        value_trait=Float(),
        help="""Group name -> monthly budget in USD. A user in a group whose spend this (UTC) month
        reached its budget cannot start a server (403 saying the group, its budget and its spend).

        Needs ``spend_table``. A group not listed has no budget.
        """,
    ).tag(config=True)

    budget_exempt_admins = Bool(
        False, help="""Whether hub admins may start servers past their groups' budgets."""
    ).tag(config=True)

    spend_interval = Float(
        300.0,
        help="""Seconds between two accruals of the running servers' time to the spend ledger.

        A server's last stretch is billed when it stops; a budget sees running servers' time
        with at most this delay.
        """,
    ).tag(config=True)

    use_price_list = Bool(
        True,
        help="""Ask AWS for prices (Price List for on-demand, spot price history for spot).

        False, or no answer: the catalog's ``hourly_cost_usd`` is the price.
        """,
    ).tag(config=True)

    price_ttl = Float(86400.0, help="""Seconds an AWS price is kept before it is asked again.""").tag(config=True)

    spend_clock = Callable(
        time.time,
        help="""The wall clock spend is billed by (epoch seconds); tests move it instead of waiting.""",
    ).tag(config=True)

    idle_timeout = Integer(
        3600,
        help="""Seconds a server may be idle before the hub stops it, for classes that set no ``idle_timeout``.

        Idle: no activity reached the hub for that long. Activity is what JupyterHub records
        (browser traffic through the proxy, the server's own reports) plus what the instance's
        activity agent reports while a kernel is busy, the CPU or a GPU works or a terminal is in
        use (docs/ARCHITECTURE.md §17). ``hubconfig.apply_settings`` sets it from the settings'
        ``idle_timeout_s``. 0: no idle limit.
        """,
    ).tag(config=True)

    max_age = Integer(
        0,
        help="""Most seconds a server runs, busy or not, for classes that set no ``max_age``; 0: no limit.""",
    ).tag(config=True)

    cull_interval = Float(
        60.0,
        help="""Seconds between two checks of every running server against its class's idle_timeout and max_age.""",
    ).tag(config=True)

    activity_interval = Integer(
        60,
        help="""Seconds between two samples of the instance's activity agent (passed in the server's secret).

        While the server is busy the agent posts its activity to the hub at this period; while it
        is idle it only checks that the hub answers.
        """,
    ).tag(config=True)

    backstop_grace = Integer(
        1800,
        help="""Seconds without an answer from the hub after which an idle instance shuts itself down.

        The backstop of a dead hub (docs/ARCHITECTURE.md §17): the instance powers off (its launch
        template's shutdown behaviour makes that a stop or a termination) once its server has been
        idle past its idle timeout, or has run past its max_age, and the hub has not answered for
        this long. Longer than a hub restart or replacement. 0: no backstop.
        """,
    ).tag(config=True)

    # -- per-server state (get_state/load_state) ---------------------------------------------
    instance_id = Unicode(None, allow_none=True)
    instance_class = Unicode(None, allow_none=True)
    subnet_id = Unicode(None, allow_none=True)
    template_version = Unicode(None, allow_none=True)
    attempt = Unicode(None, allow_none=True)
    kept_instance_id = Unicode(None, allow_none=True)
    health_note = Unicode(None, allow_none=True)
    target = Unicode(None, allow_none=True)  # a ``targets`` name; None: the hub's own account

    @default("ip")
    def _default_ip(self):
        # The notebook binds every interface of its instance; JUPYTERHUB_SERVICE_URL carries it.
        return "0.0.0.0"

    @default("port")
    def _default_port(self):
        return self.notebook_port

    @default("lease_holder")
    def _default_lease_holder(self):
        return default_holder_id()

    @default("env_keep")
    def _default_env_keep(self):
        # The hub's PATH or PYTHONPATH mean nothing on the notebook instance.
        return []

    @default("options_form")
    def _default_options_form(self):
        return _options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return opts.options_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return _apply_user_options

    @validate("classes")
    def _validate_classes(self, proposal):
        return [
            c.model_dump() if isinstance(c, ClassSettings) else ClassSettings.model_validate(c).model_dump()
            for c in proposal["value"]
        ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._starting = False
        self._events: list[dict] = []
        # progress() may be asked for before start() runs: it waits for start() to finish.
        self._progress_changed = asyncio.Event()
        self._start_done = False
        self._absent_since: float | None = None  # snapshot time poll() first missed the instance
        self._ended: str | None = None  # instance poll() found ended and cleaned up
        self._declared_dead: str | None = None  # instance poll() ended for failing its health probes
        self._claimed: set[str] = set()  # instances start() claimed on the watcher
        self._launch_call = None  # (future, ClientToken) of a RunInstances in flight
        self._resuming = False  # start() is starting a kept instance: a failure keeps it
        self._launched_here = False  # start() launched the instance moments ago
        self._cleanup: asyncio.Future | None = None  # a cancelled start's cleanup, still running
        # start_timeout as configured: a class's own start_timeout replaces it for its spawns only.
        self.configured_start_timeout = self.start_timeout
        EC2Spawner._live.add(self)
        metrics.know_classes(self.hub_id, self.classes)  # the prices of the spend-rate gauge

    # -- helpers -------------------------------------------------------------------------------

    @property
    def class_settings(self) -> list[ClassSettings]:
        return [ClassSettings.model_validate(c) for c in self.classes]

    @property
    def own_aws(self) -> Aws:
        """The hub's own account and region: its lease, spend ledger, EFS."""
        return Aws.for_region(self.region)

    def _target_settings(self, name: str | None) -> TargetSettings | None:
        if name is None:
            return None
        if name not in self.targets:
            raise TargetUnknown(f"target {name!r} is not in the hub's settings (targets: "
                                f"{', '.join(sorted(self.targets)) or 'none'})")
        return TargetSettings.model_validate(self.targets[name])

    def aws_of(self, target: str | None) -> Aws:
        """The seam of ``target``'s account and region (None: the hub's own)."""
        settings = self._target_settings(target)
        if settings is None:
            return self.own_aws
        role = AssumedRole(settings.role_arn, settings.external_id, session_name=f"ec2hub-{self.hub_id}",
                           sts_region=self.region)
        return Aws.for_role(settings.region, role)

    @property
    def aws(self) -> Aws:
        """The seam of this server's account and region (its ``target``'s, or the hub's own)."""
        return self.aws_of(self.target)

    @property
    def site_subnets(self) -> dict[str, str]:
        settings = self._target_settings(self.target)
        return dict(self.subnets) if settings is None else settings.subnets

    @property
    def site_secret_prefix(self) -> str:
        settings = self._target_settings(self.target)
        return self.secret_prefix if settings is None else settings.secret_prefix

    @property
    def site_efs_id(self) -> str | None:
        """Homes on EFS in the hub's own account only: a target's instances keep them on their disk."""
        return self.efs_id if self.target is None else None

    @property
    def server_name(self) -> str:
        return self.name or ""

    def _class(self) -> ClassSettings | None:
        """This server's class (``instance_class``), None if unset or no longer in the catalog."""
        return next((c for c in self.class_settings if c.slug == self.instance_class), None)

    @property
    def effective_stop_mode(self) -> str:
        """What stopping this server does: its class's ``stop_mode`` if it has one, else ``stop_mode``."""
        cls = self._class()
        return (cls.stop_mode if cls is not None else None) or self.stop_mode

    def check_class_limit(self, cls: ClassSettings) -> None:
        """Refuse (403) a spawn of ``cls`` if the user already runs ``max_per_user`` servers of it."""
        if cls.max_per_user is None or self.user is None:
            return
        others = sorted(
            repr(s.name) if s.name else "your default server"
            for s in list(getattr(self.user, "spawners", {}).values())
            if s is not self and s.active and getattr(s, "instance_class", None) == cls.slug
        )
        if len(others) >= cls.max_per_user:
            raise SpawnException(
                f"Class {cls.display_name!r} allows {cls.max_per_user} running server(s) per user, and "
                f"you have {len(others)} ({', '.join(others)}): stop one first, or pick another class.",
                reason="class-limit",
                status_code=403,
            )

    def get_env(self) -> dict[str, str]:
        """JupyterHub's environment of the server plus its class's ``environment``, then the limits
        the instance's activity agent enforces when the hub is silent (the backstop;
        docs/ARCHITECTURE.md §4, §17).

        The result is what the server's secret holds. The catalog refuses class variables named
        ``JUPYTERHUB_*``/``JPY_*``, so a class cannot replace the hub's own.
        """
        env = super().get_env()
        cls = self._class()
        if cls is not None:
            env.update(cls.environment)
        idle, age = self.server_limits()
        env.update(req.activity_env(idle_timeout=idle, max_age=age, interval=self.activity_interval,
                                    backstop_grace=self.backstop_grace))
        return env

    def _groups(self) -> set[str]:
        return {g.name for g in getattr(self.user, "groups", [])}

    def _watcher(self, aws: Aws | None = None) -> InstanceWatcher:
        """The watcher of ``aws``'s account and region (default: this server's)."""
        return InstanceWatcher.for_hub(
            aws or self.aws,
            self.hub_id,
            slow_interval=self.poll_interval,
            fast_interval=self.fast_poll_interval,
            grace=self.launch_visibility_grace,
            logger=self.log,
        )

    def _prober(self) -> health.HealthProber:
        return health.HealthProber.for_hub(
            self.hub_id,
            interval=self.health_interval,
            timeout=self.health_timeout,
            window=self.health_window,
            failures=self.health_failures,
            logger=self.log,
        )

    def _forget_health(self, iid: str | None) -> None:
        if iid and self.health_check:
            self._prober().forget(iid)

    def lease(self) -> HubLease | None:
        """This hub's lease on the running loop (its renewal started), or None without a table."""
        if not self.lease_table:
            return None
        return HubLease.ensure(
            self.own_aws, table=self.lease_table, hub_id=self.hub_id, holder=self.lease_holder,
            duration=self.lease_duration, renew_interval=self.lease_renew_interval,
            margin=self.lease_margin, logger=self.log,
            on_takeover=functools.partial(restart_hub_process, request=self.lease_restart_request)
            if self.lease_restart_on_takeover else None,
        )

    async def _may_act(self, what: str) -> bool:
        """Whether this hub process may change EC2 now; if not, one log line saying what it did not do."""
        lease = self.lease()
        if lease is None or await lease.settled(self.lease_wait):
            return True
        self.log.warning("%s: not %s: %s", self._log_name, what, lease.describe())
        return False

    async def _require_lease(self, what: str) -> None:
        """Raise a 503 SpawnException unless this hub holds the lease."""
        if not await self._may_act(what):
            raise SpawnException(
                "This hub is standing by while another hub takes over (it does not hold the hub "
                "lease), so it cannot start servers. Try again in a minute.",
                reason="hub-standby", status_code=503,
                log_message=f"{self._log_name}: {self.lease().describe()}",
            )

    @classmethod
    def start_sweeper(cls, *, config, db, log) -> list[OrphanSweeper]:
        """Start this hub's orphan sweepers (and their watchers) on the running loop, once: one
        for the hub's own account and region, then one per target.

        ``db`` is the hub's database session: the sweeper's ownership is every instance a saved
        spawner state names, plus the spawns in flight in this process (:meth:`hub_ownership`).
        Instance ids are unique across accounts, so one ownership serves every target.
        """
        probe = cls(config=config, log=log)  # a spawner of no user: only its configuration is read
        if not probe.sweep_orphans:
            return []
        sweepers = []
        for target in [None, *sorted(probe.targets)]:
            probe.target = target
            sweepers.append(OrphanSweeper.ensure(
                probe.aws,
                probe._watcher(),
                hub_id=probe.hub_id,
                secret_prefix=probe.site_secret_prefix,
                owned=functools.partial(cls.hub_ownership, db, probe.hub_id),
                grace=probe.orphan_grace,
                interval=probe.sweep_interval,
                keep_stopped="stop" in {probe.stop_mode, *(c.stop_mode for c in probe.class_settings
                                                           if c.target == target)},
                lease=probe.lease(),
                logger=log,
            ))
        return sweepers

    @classmethod
    def owned_instance_ids(cls, hub_id: str) -> set[str]:
        """Instances a spawner object of this process names: running, kept, or being started."""
        return {
            iid for s in list(cls._live) if s.hub_id == hub_id for iid in (s.instance_id, s.kept_instance_id) if iid
        }

    @classmethod
    def hub_ownership(cls, db, hub_id: str) -> Ownership:
        """Every instance a spawner state in the hub database names, plus this process's spawns.

        Read from JupyterHub's ORM (``orm.Spawner.state``, saved after each start and stop), so a
        server whose Spawner object is not loaded (stopped, kept for resume) still owns its
        instance. Raises if the database cannot be read: then nothing may be swept.
        """
        ids = cls.owned_instance_ids(hub_id)
        servers = set()
        rows = db.query(orm.User.name, orm.Spawner.name, orm.Spawner.state).join(orm.Spawner.user)
        for user, server, state in rows:
            servers.add(req.server_key(user, server or ""))
            for key in ("instance_id", "kept_instance_id"):
                if (state or {}).get(key):
                    ids.add(state[key])
        return Ownership.of(ids, servers)

    def _is_mine(self, view: InstanceView) -> bool:
        return view.instance_id == self.kept_instance_id or (
            view.tags.get(req.TAG_HUB) == self.hub_id
            and (view.tags.get(req.TAG_USER), view.tags.get(req.TAG_SERVER))
            == req.server_key(self.user.name, self.server_name)
        )

    def resolve_class(self, user_options) -> ClassSettings:
        """The class ``user_options`` asks for; a 4xx SpawnException saying what is allowed if refused."""
        try:
            return opts.validate_user_options(user_options, self.class_settings, self._groups())
        except opts.OptionsError as error:
            raise SpawnException(
                str(error), reason="invalid-options", status_code=error.status_code
            ) from None

    async def render_options_form(self) -> str:
        allowed = opts.allowed_classes(self.class_settings, self._groups())
        if len(allowed) <= 1:
            return ""  # nothing to choose: JupyterHub skips the form
        facts = await self._describe_types([t for c in allowed for t in c.instance_types[:1]])
        previous = (self.user_options or {}).get(opts.OPTION_KEY)
        selected = previous if any(c.slug == previous for c in allowed) else opts.default_class(allowed).slug
        prices = {c.slug: await self.hourly_price(c) for c in allowed}
        return opts.render_form(opts.form_entries(allowed, facts, selected, prices=prices),
                                spend=await self.spend_summary())

    # -- spend and budgets (ec2spawner.spend) ------------------------------------------------------

    def _ledger(self) -> spend_.SpendLedger | None:
        # In the hub's own account whatever the server's target: spend per user and group is one
        # ledger across every account the hub launches in.
        return spend_.SpendLedger(self.own_aws, self.spend_table, logger=self.log) if self.spend_table else None

    def _region_of(self, cls: ClassSettings) -> str:
        settings = self._target_settings(cls.target)
        return self.region if settings is None else settings.region

    def _price_book(self, region: str | None = None) -> spend_.PriceBook:
        return spend_.PriceBook.for_region(region or self.region, ttl=self.price_ttl, enabled=self.use_price_list,
                                           logger=self.log)

    async def hourly_price(self, cls: ClassSettings, instance_type: str | None = None, az: str = "") -> float | None:
        """USD per hour of ``instance_type`` (the class's preferred one by default) in the class's
        market and region (its target's): AWS's price when it answers (cached a day), else the
        catalog's ``hourly_cost_usd``."""
        return await self._price_book(self._region_of(cls)).hourly(instance_type or cls.instance_types[0], cls.market, az=az,
                                               fallback=cls.hourly_cost_usd)

    def _budgets_apply(self) -> bool:
        if not (self.spend_table and self.group_budgets_usd):
            return False
        return not (self.budget_exempt_admins and getattr(self.user, "admin", False))

    async def _spent(self, subjects: list[str]) -> tuple[str, dict[str, float]]:
        month = spend_.month_of(self.spend_clock())
        return month, await self._ledger().spent(subjects, month)

    async def check_budget(self) -> None:
        """Refuse (403 SpawnException) a user any of whose groups reached its budget this month.

        If the ledger cannot be read the spawn goes ahead, with a warning in the log: a DynamoDB
        outage should not stop every spawn of the hub.
        """
        if not self._budgets_apply():
            return
        groups = [g for g in self._groups() if g in self.group_budgets_usd]
        if not groups:
            return
        try:
            month, spent = await self._spent([spend_.group_subject(g) for g in groups])
        except Exception as error:  # noqa: BLE001 (fail open, said in the log)
            self.log.warning("%s: cannot read the spend ledger (%s); not checking budgets", self._log_name, error)
            return
        refusal = spend_.over_budget(groups, self.group_budgets_usd, spent, month)
        if refusal is not None:
            raise SpawnException(refusal.message, reason="over-budget", status_code=403,
                                 log_message=f"{self._log_name}: refused: {refusal.message}")

    async def spend_summary(self) -> dict | None:
        """What the form says about money: the user's spend this month and each budgeted group's."""
        if not self.spend_table:
            return None
        groups = sorted(g for g in self._groups() if g in self.group_budgets_usd)
        subjects = [spend_.user_subject(self.user.name), *(spend_.group_subject(g) for g in groups)]
        try:
            month, spent = await self._spent(subjects)
        except Exception as error:  # noqa: BLE001 (the form still works without the figures)
            self.log.warning("%s: cannot read the spend ledger (%s)", self._log_name, error)
            return None
        return {
            "month": month,
            "user_usd": spent[subjects[0]],
            "groups": [{"name": g, "spent_usd": spent[spend_.group_subject(g)],
                        "budget_usd": self.group_budgets_usd[g]} for g in groups],
        }

    async def _open_spend(self, view: InstanceView, cls: ClassSettings) -> None:
        """Start billing a server's instance now that it runs (never fails the spawn)."""
        ledger = self._ledger()
        if ledger is None:
            return
        self._spend_recorder()
        if self.use_price_list:
            # Asked now, so billing this instance later (also from poll()) finds its price cached.
            self._price_book(self._region_of(cls)).warm(view.instance_type or cls.instance_types[0], cls.market)
        try:
            await ledger.open(view.instance_id, now=self.spend_clock(), user=self.user.name,
                              server=self.server_name, class_slug=cls.slug,
                              instance_type=view.instance_type or cls.instance_types[0],
                              az=view.availability_zone, market=cls.market)
        except Exception as error:  # noqa: BLE001 (spend is an account, not a reason to fail a spawn)
            self.log.warning("%s: cannot open the spend mark of %s (%s); its time is not billed",
                             self._log_name, view.instance_id, error)

    async def accrue_spend(self, iid: str | None = None, *, close: bool = False) -> float:
        """Bill the server's instance up to now (``spend_clock``); ``close`` ends its billing."""
        ledger, iid = self._ledger(), iid or self.instance_id
        if ledger is None or not iid:
            return 0.0
        by_slug = {c.slug: c for c in self.class_settings}

        async def price(mark: dict) -> float | None:
            cls = by_slug.get(mark.get("class_slug") or self.instance_class or "")
            if cls is None:
                return None
            return await self.hourly_price(cls, mark.get("instance_type"), mark.get("az", ""))

        return await ledger.accrue(iid, now=self.spend_clock(), user=self.user.name, groups=self._groups(),
                                   price=price, close=close)

    async def _close_spend(self, iid: str) -> None:
        try:
            await self.accrue_spend(iid, close=True)
        except Exception as error:  # noqa: BLE001 (the mark stays open: the next start reopens it)
            self.log.warning("%s: cannot bill the last stretch of %s (%s)", self._log_name, iid, error)

    def _spend_recorder(self) -> spend_.SpendRecorder | None:
        """This hub's accrual task on the running loop (started once), if spend is recorded."""
        if not self.spend_table:
            return None
        hub_id = self.hub_id
        return spend_.SpendRecorder.ensure(
            (hub_id, self.spend_table),
            lambda: [s for s in list(EC2Spawner._live)
                     if s.hub_id == hub_id and s.instance_id and not s._starting and s.user is not None],
            interval=self.spend_interval, logger=self.log)

    async def _describe_types(self, types: list[str]) -> dict[str, opts.TypeFacts]:
        """Instance type figures from DescribeInstanceTypes, once per type per process."""
        missing = sorted({t for t in types if (self.region, t) not in self._type_facts})
        if missing:
            try:
                # The hub's own: a type's figures are the same in every account.
                answer = await self.own_aws.call("ec2", "DescribeInstanceTypes", InstanceTypes=missing)
            except AwsError as error:
                self.log.warning("DescribeInstanceTypes failed, form shows no figures: %s", error)
            else:
                for name, facts in opts.type_facts(answer.get("InstanceTypes", [])).items():
                    self._type_facts[(self.region, name)] = facts
        return {t: self._type_facts[(self.region, t)] for t in types if (self.region, t) in self._type_facts}

    def _progress(self, message: str, progress: int | None = None) -> None:
        self.log.info("%s: %s", self._log_name, message)
        event = {"message": message}
        if progress is not None:
            event["progress"] = progress
        self._events.append(event)
        self._progress_changed.set()

    def _url(self, view: InstanceView) -> str:
        return self.server_url_template.format(
            private_ip=view.private_ip,
            public_ip=view.public_ip,
            private_dns=view.private_dns,
            public_dns=view.public_dns,
            instance_id=view.instance_id,
            port=self.notebook_port,
        )

    # -- state ---------------------------------------------------------------------------------

    def get_state(self):
        state = super().get_state()
        for key in _STATE_KEYS:
            value = getattr(self, key)
            if value:
                state[key] = value
        return state

    def load_state(self, state):
        super().load_state(state)
        for key in _STATE_KEYS:
            if key in state:
                setattr(self, key, state[key])

    def clear_state(self):
        super().clear_state()
        for key in _STATE_KEYS:
            if key not in _KEPT_ACROSS_STOPS:
                setattr(self, key, None)

    # -- start ---------------------------------------------------------------------------------

    async def start(self):
        """Start the server's instance; return the URL the hub reaches it at, once the server
        answers there (``wait_for_server``; once the instance runs without it).

        Adopts this server's instance if one exists (a spawn cut short by a hub crash, or one
        kept stopped by ``stop_mode = "stop"``), else launches one from the class's launch
        template. The instance reads its env (with this spawn's API token) from its secret at
        every start of its server, so the secret is always written before the instance starts
        (RunInstances, StartInstances), and an adopted instance that may have read an older token
        is restarted (see :meth:`_restart_for_new_token`). Then the instance boots and its server
        starts: ``start()`` waits for the server's first answer (:meth:`_wait_answering`), so
        ``start_timeout`` bounds the whole start and JupyterHub's check after it passes at once.

        Raises SpawnException with a message for the user on failure. Every failure, timeout,
        cancellation or hub shutdown leaves no instance and no secret behind, except that an
        instance kept stopped for this server is stopped again and kept (its disk is the point),
        and that a cancellation while the server boots keeps the running instance, its state saved,
        for the ``stop()`` JupyterHub calls next or for the restarted hub.
        """
        cls = self.resolve_class(self.user_options)  # again: an admin may have replaced the hook
        self.instance_class = cls.slug
        self.attempt = uuid.uuid4().hex
        self._events = []
        if self.health_note:
            self._progress(f"The last time: {self.health_note}", 0)
        self._start_done = False
        self._starting = True
        self._resuming = False
        self._launched_here = False
        watcher = self._watcher(self.aws_of(cls.target))
        clock = metrics.SpawnClock(cls.slug)
        deadline = time.monotonic() + self.start_timeout
        booting = False  # the instance runs, its state is saved: waiting for the server to answer
        try:
            await self._require_lease("starting")
            await self.check_budget()  # again: the hook may be replaced, and spend grows meanwhile
            await self._move_to_target(cls.target)
            with watcher.spawning():
                since = await self._adopt_or_launch(cls, watcher)
                clock.phase("launch")
                view = await self._wait_running(watcher, since)
                clock.phase("boot")
            await self._open_spend(view, cls)
            self._progress(f"Running at {view.private_ip}, booting", 80)
            self._progress("Waiting for the notebook server", 90)
            if self.wait_for_server:
                self._save_state()
                booting = True
                await self._wait_answering(watcher, view, deadline)
                clock.phase("server")
            self.health_note = None
            return self._url(view)
        except BaseException as error:
            if booting and isinstance(error, asyncio.CancelledError):
                # Cancelled while the server boots (JupyterHub's start_timeout, or its DELETE of
                # the pending spawn, each followed by its stop(); or a hub shutdown): as once
                # start() returned, the running instance stays the server's, saved in the hub
                # database. stop() ends it, or the restarted hub finds it (init_spawners: poll(),
                # then its own wait for the server's answer, bounded by http_timeout).
                self.log.info("%s: start interrupted while the server boots; %s stays the server's",
                              self._log_name, self.instance_id)
                raise
            # Exception, timeout (JupyterHub cancels start() after start_timeout), cancellation or
            # hub shutdown: leave nothing behind. Shielded so a second cancellation does not
            # interrupt the cleanup; it runs in a worker thread that finishes even then.
            shown = _spawn_error(error) if isinstance(error, AwsError) else error
            self._progress(f"Start failed: {_describe_error(shown)}")
            metrics.spawn_failed(self.log, self._log_name, cls.slug, shown)
            cleanup = self._begin_abandon()
            if isinstance(error, asyncio.CancelledError):
                # A cancelled start ends at once and leaves the cleanup running in its thread:
                # JupyterHub's DELETE of a pending spawn cancels start() and calls stop() a second
                # later, which it refuses ("pending spawn") while start() has not ended, leaving
                # the server listed with no instance. stop() waits for the cleanup instead.
                self._cleanup = cleanup
            else:
                await _settle(cleanup)
            if shown is not error:
                raise shown from None
            raise
        finally:
            # The instance is owned through instance_id now (or was abandoned): claims end here.
            for iid in self._claimed:
                watcher.release(iid, self)
            self._claimed.clear()
            self._starting = False
            self._start_done = True
            self._progress_changed.set()

    async def _move_to_target(self, target: str | None) -> None:
        """Make ``target`` this server's account and region; an instance kept stopped for the
        server in the one it leaves is terminated there first, with its secret (it could never be
        resumed in the other account). ``target`` changes only once that is done, so a failure
        leaves the server naming the account its instance is in."""
        if target == self.target:
            return
        iid = self.kept_instance_id
        if iid:
            self.log.info("%s: terminating %s, kept in %s: the class %s launches in %s", self._log_name, iid,
                          self.target or "the hub's account", self.instance_class, target or "the hub's account")
            await self._terminate(iid)
            await self._delete_secret(iid)
            self.kept_instance_id = None
        self.target = target

    def _begin_abandon(self) -> asyncio.Future | None:
        """Start undoing a failed start: terminate what it launched or adopted, delete its secret;
        stop and keep a resumed instance instead. Learns the outcome of a RunInstances still in
        flight. The work is on the seam's pool from this call on, so neither a cancellation of
        the caller nor a hub shutdown can keep it from running; the future says when it is done.
        """
        iid, keep, young = self.instance_id, self._resuming, self._launched_here
        launch, self._launch_call = self._launch_call, None
        self.instance_id = None
        if keep:
            self.kept_instance_id = iid
        if iid is None and launch is None:
            return None
        future = self.aws.start_in_thread(self._cleanup_blocking, iid, launch, keep, young)

        def logged(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is not None:
                self.log.error("%s: cleanup of %s failed; the sweeper will retry: %s",
                               self._log_name, iid, done.exception())

        future.add_done_callback(logged)
        return future

    def _cleanup_blocking(self, iid: str | None, launch, keep: bool, young: bool) -> None:
        """The cleanup itself, in a worker thread: a hub shutdown cancels every task of its loop,
        but a thread runs to its end (the interpreter joins the pool's threads before it exits)."""
        if iid is None:
            iid = self._launched_id(*launch)
            young = True
            if iid is None:
                return
        if keep:
            self._stop_blocking(iid)
        elif not self._terminate_blocking(iid, young):
            self.log.warning("%s: TerminateInstances %s: not listed by EC2 after %.0f s; the sweeper "
                             "will end it", self._log_name, iid, self.launch_visibility_grace)
            return
        self.aws.call_blocking("ssm", "DeleteParameter", Name=req.secret_name(self.site_secret_prefix, iid),
                               ignore={ErrorKind.NOT_FOUND})
        self.log.info("%s: %s %s after a failed start", self._log_name,
                      "stopped and kept" if keep else "cleaned up", iid)

    def _launched_id(self, future, token: str) -> str | None:
        """The instance a RunInstances call made, waiting for the call if it is still in flight."""
        try:
            return future.result()["Instances"][0]["InstanceId"]
        except (AwsError, concurrent.futures.CancelledError):
            return None  # AWS refused it, or it was never sent: no instance
        except Exception as error:  # noqa: BLE001 (the answer was lost: ask EC2 by the call's token)
            self.log.warning("%s: RunInstances outcome lost (%s); looking it up by its ClientToken",
                             self._log_name, error)
        answer = self.aws.call_blocking("ec2", "DescribeInstances",
                                        Filters=[{"Name": "client-token", "Values": [token]}])
        found = [i["InstanceId"] for r in answer.get("Reservations", []) for i in r["Instances"]]
        return found[0] if found else None

    def _terminate_blocking(self, iid: str, young: bool) -> bool:
        """TerminateInstances; True once EC2 accepted it (or, for an old instance, it is gone).

        ``InvalidInstanceID.NotFound`` for an instance launched moments ago means "not listed
        yet" (EC2 is eventually consistent): retried until ``launch_visibility_grace`` is over.
        """
        deadline = time.monotonic() + (self.launch_visibility_grace if young else 0)
        delay = 0.25
        while True:
            try:
                self.aws.call_blocking("ec2", "TerminateInstances", InstanceIds=[iid])
                return True
            except AwsError as error:
                if error.kind is not ErrorKind.NOT_FOUND:
                    raise
                if time.monotonic() >= deadline:
                    return not young
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _stop_blocking(self, iid: str) -> None:
        """StopInstances for a resumed instance whose start failed (a pending one cannot be
        stopped yet: retried until ``stop_timeout``)."""
        deadline = time.monotonic() + self.stop_timeout
        while True:
            try:
                self.aws.call_blocking("ec2", "StopInstances", InstanceIds=[iid], ignore={ErrorKind.NOT_FOUND})
                return
            except AwsError as error:
                if error.code != "IncorrectInstanceState" or time.monotonic() >= deadline:
                    raise
            time.sleep(2.0)

    async def _adopt_or_launch(self, cls: ClassSettings, watcher: InstanceWatcher) -> float:
        """Adopt, resume or launch this server's instance with its secret written; return the
        monotonic time of the last call that started it (the visibility grace counts from it)."""
        snapshot = await watcher.fresh()
        mine = sorted(
            (v for v in snapshot.values() if self._is_mine(v) and v.state not in req.GONE_STATES),
            key=lambda v: v.launch_time or datetime.min.replace(tzinfo=UTC),
            reverse=True,
        )
        chosen: InstanceView | None = None
        for view in mine:
            # The sweeper claims an orphan right before it terminates it: never adopt that one.
            if not watcher.claim(view.instance_id, self):
                self.log.info("%s: not adopting %s: the sweeper is ending it", self._log_name, view.instance_id)
                continue
            self._claimed.add(view.instance_id)
            if chosen is None and await self._can_reuse(view, cls):
                chosen = view
            else:
                # A duplicate, another class, or a stopped instance from an older template.
                self.log.info("%s: terminating %s (%s, class %s): not reusable",
                              self._log_name, view.instance_id, view.state, view.tags.get(req.TAG_CLASS))
                await self._terminate(view.instance_id)
        # Chosen (named by instance_id from here on), terminated, being swept, or gone.
        self.kept_instance_id = None
        if chosen is None:
            return await self._launch(cls, watcher)
        self.instance_id = chosen.instance_id
        self.subnet_id = chosen.subnet_id
        self.template_version = chosen.tags.get(req.TAG_TEMPLATE_VERSION)
        # A stopped instance is kept whatever fails from here on: its disk is the point.
        self._resuming = chosen.state in req.RESUMABLE_STATES
        await self._retag_if_renamed(chosen)
        if chosen.state == "pending":
            # Not booted yet: it reads the secret written now when its server first starts.
            self._progress(f"Adopting {chosen.instance_id} (pending), launched earlier for this server", 30)
            await self._write_secret(chosen)
            return time.monotonic()
        if chosen.state == "running":
            self._progress(f"Adopting {chosen.instance_id} (running), launched earlier for this server", 30)
            if await self._write_secret(chosen):
                return await self._restart_for_new_token(chosen, cls, watcher)
            return time.monotonic()  # it is still waiting for its first secret
        return await self._start_stopped(chosen, watcher)

    async def _restart_for_new_token(self, view: InstanceView, cls: ClassSettings, watcher: InstanceWatcher) -> float:
        """Make a running adopted instance, which may hold an older token, read the new one.

        Its server reads the secret at every start (ExecStartPre of its unit), so a restart of the
        instance is enough. Stop and start rather than RebootInstances: a reboot is asynchronous
        and leaves no trace in DescribeInstances, so the old server could still answer the hub's
        readiness check with the old token (the user's login would then end in
        ``invalid_client``), while ``stopped`` then ``running`` are states EC2 reports; the root
        volume and private address are kept either way. A spot instance cannot be stopped
        (one-time spot): it is replaced.
        """
        iid = view.instance_id
        if cls.is_spot:
            self._progress(f"Replacing spot instance {iid}: it may hold an older token", 30)
            await self._terminate(iid)
            await self._delete_secret(iid)
            self.instance_id = None
            return await self._launch(cls, watcher)
        self._progress(f"Restarting {iid} so that it reads its new token", 35)
        self._resuming = self._keeps_stopped()  # from here on, a failure stops and keeps it
        await self.aws.call("ec2", "StopInstances", InstanceIds=[iid])
        stopped = await watcher.wait_for(iid, lambda v: v is None or v.state in ("stopped", *req.GONE_STATES),
                                         timeout=self.start_timeout)
        if stopped is None or stopped.state != "stopped":
            return time.monotonic()  # ended meanwhile: _wait_running reports it
        return await self._start_stopped(stopped, watcher, secret_written=True)

    async def _start_stopped(self, view: InstanceView, watcher: InstanceWatcher, *, secret_written=False) -> float:
        """StartInstances for a stopped instance of this server, its new secret written first."""
        iid = view.instance_id
        if view.state == "stopping":  # EC2 refuses to start it until it is stopped
            self._progress(f"Instance {iid} is still stopping", 20)
            view = await watcher.wait_for(iid, lambda v: v is None or v.state != "stopping",
                                          timeout=self.start_timeout) or view
        if not secret_written:
            await self._write_secret(view)  # before StartInstances: its server reads it at start
        self._progress(f"Starting stopped instance {iid} again", 30)
        try:
            await self.aws.call("ec2", "StartInstances", InstanceIds=[iid])
        except AwsError as error:
            if error.kind is ErrorKind.CAPACITY:
                raise SpawnException(
                    f"EC2 has no {view.instance_type} capacity in {view.availability_zone} to start "
                    f"your stopped server again right now ({error.code}). Its disk is kept: try later "
                    "or another class.",
                    reason="capacity", status_code=503,
                    log_message=f"{self._log_name}: StartInstances {iid}: {error.code}: {error.message}",
                ) from None
            raise
        since = time.monotonic()
        watcher.expect(InstanceView(instance_id=iid, state="pending", owner_id=view.owner_id,
                                    availability_zone=view.availability_zone))
        return since

    async def _can_reuse(self, view: InstanceView, cls: ClassSettings) -> bool:
        if view.tags.get(req.TAG_CLASS) != cls.slug or view.instance_type not in cls.instance_types:
            return False
        if view.state in req.LIVE_STATES:
            return True
        if (cls.stop_mode or self.stop_mode) != "stop" or view.state not in req.RESUMABLE_STATES:
            return False
        current = await self._default_template_version(cls)
        if view.tags.get(req.TAG_TEMPLATE_VERSION) != current:
            self._progress(
                f"Class {cls.slug} changed since {view.instance_id} was made "
                f"(template version {view.tags.get(req.TAG_TEMPLATE_VERSION)} -> {current}): replacing it",
                20,
            )
            return False
        return True

    async def _default_template_version(self, cls: ClassSettings) -> str:
        answer = await self.aws.call(
            "ec2", "DescribeLaunchTemplates", LaunchTemplateIds=[cls.launch_template_id]
        )
        return str(answer["LaunchTemplates"][0]["DefaultVersionNumber"])

    # (hub id, file system id, unix user) -> access point id, for every spawner of the process.
    _access_points: ClassVar[dict[tuple[str, str, str], str]] = {}

    async def home_access_point(self) -> str | None:
        """The id of this user's EFS access point, made if it does not exist yet; None without EFS.

        Found by its tags (``ec2hub:hub``, ``ec2hub:unix-user``) among the file system's access
        points, else created (:func:`payloads.access_point_params`): the home ``/home/<unix
        name>``, entered only as the user's uid. Called before RunInstances, so a file system that
        is gone or refuses is a SpawnException with nothing launched.
        """
        if not self.site_efs_id:
            return None
        unix = req.unix_name(self.user.name)
        key = (self.hub_id, self.efs_id, unix)
        try:
            # The platform never deletes access points, but an administrator may: a remembered id
            # is asked about (one call) before it is named to an instance, whose mount would fail.
            cached = self._access_points.get(key)
            if cached is not None and await self._access_point_is_there(cached, unix):
                return cached
            found = await self._find_access_point(unix)
            if cached is not None and found != cached:
                self.log.warning("%s: EFS access point %s of %s is gone from %s: %s", self._log_name, cached,
                                 unix, self.efs_id, f"using {found}" if found else "making another")
            if found is None:
                self._progress(f"Creating your home directory's access point on {self.efs_id}", 5)
                made = await self.own_aws.call(
                    "efs", "CreateAccessPoint", ignore={ErrorKind.ALREADY_EXISTS},
                    **req.access_point_params(hub_id=self.hub_id, file_system_id=self.efs_id, unix=unix,
                                              replaces=cached))
                # Already made by this token (a retried call, or another hub process): find it.
                found = made["AccessPointId"] if made else await self._find_access_point(unix)
                self.log.info("%s: EFS access point %s for %s on %s", self._log_name, found, unix, self.efs_id)
        except AwsError as error:
            raise SpawnException(
                f"Your home directory cannot be reached: the file system {self.efs_id} refused "
                f"({error.code}). An administrator must check the hub's EFS (efs_id).",
                reason="home", status_code=503,
                log_message=f"{self._log_name}: EFS {self.efs_id}: {error}",
            ) from None
        if found is None:
            raise SpawnException(
                f"Your home directory cannot be reached: no access point for it on {self.efs_id}.",
                reason="home", status_code=503)
        self._access_points[key] = found
        return found

    async def _access_point_is_there(self, access_point_id: str, unix: str) -> bool:
        """Whether the access point still exists, usable, as this hub's for ``unix``. Not found, or
        refused (IAM may refuse a deleted one, whose tags it cannot read): no, and the caller lists
        the file system's access points instead."""
        answer = await self.own_aws.call("efs", "DescribeAccessPoints", ignore={ErrorKind.NOT_FOUND, ErrorKind.UNAUTHORIZED},
                                     AccessPointId=access_point_id)
        return any(req.access_point_owner(item, self.hub_id) == unix for item in (answer or {}).get("AccessPoints", []))

    async def _find_access_point(self, unix: str) -> str | None:
        token = None
        while True:
            page = await self.own_aws.call("efs", "DescribeAccessPoints", **req.access_point_filter(self.efs_id),
                                       **({"NextToken": token} if token else {}))
            for item in page.get("AccessPoints", []):
                if req.access_point_owner(item, self.hub_id) == unix:
                    return item["AccessPointId"]
            token = page.get("NextToken")
            if not token:
                return None

    async def _launch(self, cls: ClassSettings, watcher: InstanceWatcher) -> float:
        """RunInstances, trying every AZ for each type in turn; write the secret; return when."""
        tags = req.instance_tags(
            hub_id=self.hub_id,
            user=self.user.name,
            server=self.server_name,
            class_slug=cls.slug,
            secret_prefix=self.site_secret_prefix,
            efs_id=self.site_efs_id,
            access_point_id=await self.home_access_point(),
        )
        plan = req.launch_plan(cls.instance_types, req.ordered_subnets(self.site_subnets, watcher.load_by_az()))
        deadline = time.monotonic() + self.start_timeout
        no_capacity = []
        for itype, az, subnet in plan:
            self._progress(f"Requesting {itype} in {az}", 10)
            params = req.launch_params(
                launch_template_id=cls.launch_template_id,
                instance_type=itype,
                subnet_id=subnet,
                tags=tags,
                token=req.client_token(
                    hub_id=self.hub_id, user=self.user.name, server=self.server_name,
                    attempt=self.attempt, instance_type=itype, subnet_id=subnet,
                ),
                spot=cls.is_spot,
            )
            try:
                answer = await self._run_instances(params, deadline)
            except AwsError as error:
                if error.kind is ErrorKind.CAPACITY:
                    no_capacity.append(f"{itype} in {az}")
                    metrics.CAPACITY_FALLBACKS.labels(cls.slug, error.code).inc()
                    self._progress(f"No capacity for {itype} in {az} ({error.code})")
                    continue
                raise
            since = time.monotonic()
            instance = answer["Instances"][0]
            view = InstanceView.from_api(instance, answer.get("OwnerId", ""))
            # Recorded before any await so every failure path can clean it up.
            self.instance_id, self.subnet_id = view.instance_id, subnet
            self._launch_call, self._launched_here = None, True
            self.template_version = view.tags.get(req.TAG_TEMPLATE_VERSION)
            watcher.expect(view)
            self._progress(f"Instance {view.instance_id} pending ({itype} in {az})", 30)
            await self._write_secret(view)
            return since
        raise SpawnException(
            f"EC2 has no capacity for class {cls.display_name!r} right now "
            f"(tried {', '.join(no_capacity)}). Try again in a few minutes or pick another class.",
            reason="capacity",
            status_code=503,
        )

    async def _run_instances(self, params: dict, deadline: float) -> dict:
        """RunInstances, retried while throttled until ``deadline`` (monotonic; same ClientToken:
        never a second instance).

        The call in flight is recorded in ``_launch_call`` before it is awaited: if this
        coroutine is cancelled (start_timeout, a cancelled spawn, hub shutdown) the worker thread
        still finishes the call, and :meth:`_begin_abandon` learns from it which instance to terminate.
        """
        delay = 1.0
        while True:
            await self._require_lease("launching")  # the lease may have lapsed since start() began
            future = await self.aws.submit("ec2", "RunInstances", **params)
            self._launch_call = (future, params["ClientToken"])
            try:
                return await asyncio.wrap_future(future)
            except AwsError as error:
                self._launch_call = None  # AWS answered: no instance
                wait = delay * (0.5 + random.random())
                if error.kind is not ErrorKind.THROTTLED or time.monotonic() + wait > deadline:
                    raise
                self.log.info("%s: RunInstances throttled, retrying in %.1f s", self._log_name, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, 16)

    def server_limits(self) -> tuple[int, int]:
        """This server's (idle timeout, max age) in seconds: its class's, else the hub-wide
        ``idle_timeout`` and ``max_age``; 0 means no limit."""
        # The raw class mappings (validated when the hub loaded them): the culler asks this of
        # every server each round, cheaper than validating every class again.
        cls = next((c for c in self.classes if c.get("slug") == self.instance_class), {})
        idle, age = cls.get("idle_timeout"), cls.get("max_age")
        return (self.idle_timeout if idle is None else idle), (self.max_age if age is None else age)

    async def _write_secret(self, view: InstanceView) -> bool:
        """The server's env (with its API token) as SecureString ``<prefix><instance-id>``.

        Returns whether the secret existed already (an adopted or resumed instance: same name,
        new token), i.e. whether the instance may have read an older token.
        """
        env = self.get_env()
        name = req.secret_name(self.site_secret_prefix, view.instance_id)
        owner = view.owner_id or await self._account_id()
        arn = req.instance_arn(
            partition=self.aws.partition, region=self.aws.region, account=owner, instance_id=view.instance_id
        )
        created = await self.aws.call("ssm", "PutParameter", ignore={ErrorKind.ALREADY_EXISTS},
                                      **req.secret_put_params(name=name, env=env, hub_id=self.hub_id, arn=arn))
        if created is None:
            await self.aws.call("ssm", "PutParameter", **req.secret_overwrite_params(name=name, env=env))
        self.log.debug("%s: wrote secret %s", self._log_name, name)
        return created is None

    async def _account_id(self) -> str:
        answer = await self.aws.call("sts", "GetCallerIdentity")
        return answer["Account"]

    async def _retag_if_renamed(self, view: InstanceView) -> None:
        """Tag an adopted instance with this server's current user and server names.

        JupyterHub 6.1.1 renames a user with no spawner hook (``PATCH /users/:name`` only sets
        ``user.name``); the saved state (``kept_instance_id``) still names the instance, and its
        tags follow here, at its next start. Server renames go through :meth:`rename`.
        """
        if (view.tags.get(req.TAG_USER), view.tags.get(req.TAG_SERVER)) != req.server_key(
                self.user.name, self.server_name):
            self.log.info("%s: retagging %s (was %s:%s)", self._log_name, view.instance_id,
                          view.tags.get(req.TAG_USER), view.tags.get(req.TAG_SERVER))
            await self.aws.call("ec2", "CreateTags", Resources=[view.instance_id], Tags=req.rename_tags(
                hub_id=self.hub_id, user=self.user.name, server=self.server_name))

    async def _wait_running(self, watcher: InstanceWatcher, since: float) -> InstanceView:
        """Wait until the instance runs; a SpawnException saying why if it ended instead.

        Within ``launch_visibility_grace`` of the call that started it (``since``), an instance
        not listed yet or still listed as stopped (a lagging answer right after StartInstances)
        is waited for, not taken as a failure.
        """
        iid = self.instance_id

        def settled(v: InstanceView | None) -> bool:
            if v is None or v.state in req.RESUMABLE_STATES:
                return time.monotonic() - since > self.launch_visibility_grace
            return v.state != "pending"

        view = await watcher.wait_for(iid, settled, timeout=self.start_timeout)
        if view is not None and view.state == "running":
            return view
        raise self._ended_while_starting(iid, view)

    def _save_state(self) -> None:
        """Save the spawner state in the hub database now, as JupyterHub does once ``start()``
        returned (User.spawn), so that a hub that dies while the server boots leaves the running
        instance named by its server, as it did when ``start()`` returned at ``running``."""
        orm_spawner = self.orm_spawner
        session = sqlalchemy.orm.object_session(orm_spawner) if isinstance(orm_spawner, orm.Spawner) else None
        if session is None:  # not a hub's spawner (tests, benchmarks): nothing to save into
            return
        orm_spawner.state = self.get_state()
        session.commit()

    def _ended_while_starting(self, iid: str, view: InstanceView | None) -> SpawnException:
        """What the user reads when the instance stopped running before its server answered."""
        code = view.state_reason_code if view else ""
        reason, message = _STATE_REASONS.get(
            code, ("instance-ended", f"The instance ended while starting ({code or 'no longer listed by EC2'}).")
        )
        return SpawnException(message, reason=reason, status_code=503,
                              log_message=f"{self._log_name}: {iid} {view.state if view else 'gone'}: {code}")

    async def _wait_answering(self, watcher: InstanceWatcher, view: InstanceView, deadline: float) -> None:
        """Wait until the booting server answers at its URL, as JupyterHub's readiness check wants.

        Probes ``GET <url><base_url>api`` every ``ready_interval`` until an answer below 500
        (JupyterHub's ``wait_for_http_server`` takes any other status for "up"), while the watcher
        follows the instance: a SpawnException at once if EC2 reports it no longer running (a spot
        interruption, a shutdown while booting), and one when ``deadline`` (the start's
        ``start_timeout``) passes first.
        """
        iid, url = view.instance_id, self._url(view)
        path = url_path_join(self.server.base_url if self.server else "/", "api")
        running_since = time.monotonic()
        remaining = deadline - running_since
        answered = asyncio.ensure_future(self._first_answer(url, path))
        ended = asyncio.ensure_future(
            watcher.wait_for(iid, lambda v: v is not None and v.state != "running", timeout=max(remaining, 0)))
        try:
            await asyncio.wait({answered, ended}, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answered, ended):
                task.cancel()
            await asyncio.gather(answered, ended, return_exceptions=True)
        if answered.done() and not answered.cancelled():
            probes, status = answered.result()
            self.log.info("%s: server on %s answered %.1f s after running (%s, probe %d)", self._log_name, iid,
                          time.monotonic() - running_since, status, probes)
            return
        if ended.done() and not ended.cancelled() and ended.exception() is None:
            raise self._ended_while_starting(iid, ended.result())
        raise SpawnException(
            f"The notebook server did not answer within {self.start_timeout} s of the spawn request.",
            reason="timeout", status_code=504,
            log_message=f"{self._log_name}: {iid} running, no answer at {url}{path} before start_timeout")

    async def _first_answer(self, url: str, path: str) -> tuple[int, str]:
        """Probe until the server answers with a status below 500: (probes made, its status line)."""
        probes = 0
        while True:
            probes += 1
            finding, detail = await health.probe(url, path, self.health_timeout)
            if finding == health.Finding.OK and health.status_code(detail) < 500:
                return probes, detail
            await asyncio.sleep(self.ready_interval)

    # -- poll / url / stop ---------------------------------------------------------------------

    async def poll(self):
        """Whether the server's instance still runs: None, 0 or 1, as ``Spawner.poll`` promises.

        - ``None`` while a start is in progress, while the instance is pending or running, and
          whenever EC2 cannot be asked (an AWS or network error, or no snapshot yet after a hub
          restart while EC2 is unreachable): a server is never reported dead on a failure to ask.
        - ``1`` when EC2 itself says the instance ended: shutting-down or terminated, or not
          listed for longer than ``launch_visibility_grace`` (EC2 is eventually consistent).
        - ``0`` when the instance is stopped or stopping (outside ``stop()``), or there is none.
        - ``1`` when the instance runs but its server failed its health probes for
          ``health_window`` (:mod:`ec2spawner.health`; never during start, never on a failure of
          the hub's own network): the instance is ended here first, and ``health_note`` says why.

        JupyterHub does not call ``stop()`` after ``poll()`` reported an exit (user.py
        ``User.stop``), so a server found dead is cleaned up here: its secret is deleted and, with
        ``stop_mode = "terminate"``, a stopped instance is terminated.
        """
        if self._starting:
            return None
        if not self.instance_id:
            return 0
        if self._declared_dead == self.instance_id:
            return 1  # ended for failing its probes; JupyterHub polls once more in User.stop
        try:
            watcher = self._watcher()
        except TargetUnknown as error:  # cannot ask: never reported dead for that
            self.log.error("%s: cannot ask EC2 about %s: %s", self._log_name, self.instance_id, error)
            return None
        if watcher.refreshes == 0:  # first poll after a hub restart: no snapshot yet
            try:
                # Bounded: JupyterHub's init_spawners awaits every check before the hub serves.
                await asyncio.wait_for(asyncio.shield(watcher.refresh()), timeout=_FIRST_POLL_WAIT)
            except Exception as error:  # noqa: BLE001 (any failure to ask means "still running")
                self.log.warning("%s: cannot ask EC2 about %s yet (%s); reporting it running",
                                 self._log_name, self.instance_id, error or type(error).__name__)
                return None
        view = watcher.get(self.instance_id)
        if view is not None:
            self._absent_since = None
            if view.state in req.LIVE_STATES:
                return await self._check_health(view)
        elif not self._absent_long_enough(watcher):
            return None
        status = 1 if view is None or view.state in req.GONE_STATES else 0
        if view is None:
            self.log.warning("%s: instance %s is gone (not listed for %.0f s)", self._log_name,
                             self.instance_id, self.launch_visibility_grace)
        else:
            self.log.warning("%s: instance %s is %s (%s)", self._log_name, self.instance_id,
                             view.state, view.state_reason_code or "no reason given")
        await self._end_found_dead(view)
        return status

    async def _check_health(self, view: InstanceView) -> int | None:
        """None, or 1 once the server's probes declared it dead and its instance was ended.

        A server is watched only once JupyterHub has seen it answer (not while a spawn, stop or
        start-up check is pending: the hub's own ``http_timeout`` covers the boot).
        """
        if not self.health_check or view.state != "running" or self.pending or not self.server:
            return None
        iid = self.instance_id
        prober = self._prober()
        prober.watch(iid, self._url(view), url_path_join(self.server.base_url, "api"))
        reason = prober.verdict(iid)
        if reason is None or not await self._end_unhealthy(iid, reason):
            return None
        prober.forget(iid)
        return 1

    async def _end_unhealthy(self, iid: str, reason: str) -> bool:
        """End the instance of a server that failed its probes, as ``stop()`` would; keep why.

        False if AWS refused: the server is then still reported running, and the next poll tries
        again (its instance stays owned, so the sweeper does not take it meanwhile).
        """
        if not await self._may_act(f"ending {iid}, which failed its health probes ({reason})"):
            return False  # reported running; the lease holder's probes will end it
        self.log.warning("%s: server on %s declared dead (%s); ending the instance", self._log_name, iid, reason)
        console = await self._console_tail(iid)
        try:
            if self._keeps_stopped():
                await self.aws.call("ec2", "StopInstances", InstanceIds=[iid], ignore={ErrorKind.NOT_FOUND})
                self.kept_instance_id = iid
            else:
                await self._terminate(iid)
            await self._close_spend(iid)
            await self._delete_secret(iid)
        except AwsError as error:
            self.log.warning("%s: ending %s failed (%s); trying again at the next poll", self._log_name, iid, error)
            return False
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.health_note = health.ended_note(reason, console, when)
        self._declared_dead = self._ended = iid
        health.COUNTERS.declared_dead += 1
        return True

    async def _console_tail(self, iid: str) -> list[str]:
        """The bootstrap's last console lines (GetConsoleOutput); none if EC2 cannot give them."""
        try:
            answer = await asyncio.wait_for(
                self.aws.call("ec2", "GetConsoleOutput", InstanceId=iid, Latest=True), self.health_timeout)
        except (AwsError, TimeoutError) as error:
            self.log.info("%s: no console output of %s (%s)", self._log_name, iid, error or "timed out")
            return []
        # botocore decodes the base64 ``Output`` itself (handlers.decode_console_output).
        return health.console_tail(answer.get("Output") or "")

    def _absent_long_enough(self, watcher: InstanceWatcher) -> bool:
        """Not listed by every snapshot of the last ``launch_visibility_grace`` seconds."""
        if self._absent_since is None:
            self._absent_since = watcher.snapshot_started
        return watcher.snapshot_started - self._absent_since >= self.launch_visibility_grace

    async def _end_found_dead(self, view: InstanceView | None) -> None:
        """What ``stop()`` would have done for a server ``poll()`` found ended (once per instance)."""
        iid = self.instance_id
        if self._ended == iid:
            return
        self._forget_health(iid)
        if not await self._may_act(f"cleaning up ended {iid} (the lease holder's sweeper does)"):
            return
        try:
            if view is not None and view.state in req.RESUMABLE_STATES:
                if self._keeps_stopped():
                    self.kept_instance_id = iid  # the next start resumes it
                else:
                    self.log.info("%s: terminating %s, found %s (stop_mode=%s)", self._log_name, iid,
                                  view.state, self.effective_stop_mode)
                    await self._terminate(iid)
            await self._close_spend(iid)
            await self._delete_secret(iid)
            self._ended = iid
        except Exception:
            self.log.exception("%s: cleanup of ended %s failed; the sweeper will retry", self._log_name, iid)

    def _keeps_stopped(self) -> bool:
        """Whether stopping keeps this server's instance (stop_mode=stop, and not spot)."""
        cls = self._class()
        return self.effective_stop_mode == "stop" and not (cls and cls.is_spot)

    async def get_url(self):
        """The server's URL from the instance's current addresses (``server_url_template``), as
        last seen by the watcher, with the server's ``base_url`` as JupyterHub stores it (its
        start-up check compares the two and rewrites the row when they differ); JupyterHub's
        stored URL when the instance is not known."""
        if self.instance_id:
            view = self._watcher().get(self.instance_id)
            if view is not None and view.private_ip:
                url = self._url(view)
                return url_path_join(url, self.server.base_url) if self.server else url
        return await super().get_url()

    async def stop(self, now=False):
        """End the server's instance and delete its secret; idempotent.

        ``stop_mode = "terminate"`` (and spot classes): TerminateInstances. ``"stop"``:
        StopInstances, and the instance is kept for the next start (``kept_instance_id`` survives
        ``clear_state`` so the hub database names it). Unless ``now``, waits up to
        ``stop_timeout`` for EC2 to report it stopped or terminated. JupyterHub calls this only
        when ``poll()`` returned None.

        On a hub without the lease (:mod:`ec2spawner.lease`) nothing changes in EC2: the instance
        is kept for the server (``kept_instance_id``, which the hub database keeps naming) and
        :class:`~ec2spawner.lease.LeaseError` says so.
        """
        cleanup, self._cleanup = self._cleanup, None
        await _settle(cleanup)  # a cancelled start's cleanup: done once stop() returns
        iid = self.instance_id
        if not iid:
            return
        self._forget_health(iid)
        if not await self._may_act(f"stopping {iid}"):
            # JupyterHub clears the state after stop() whatever it returns or raises: name the
            # instance in what survives (kept_instance_id), so the hub database still owns it, no
            # sweeper ends it, and the next start (on the lease holder) adopts it.
            self.kept_instance_id, self.instance_id = iid, None
            raise LeaseError(
                f"{self._log_name}: not stopped: {self.lease().describe()}. Instance {iid} is left as it "
                "is and kept for this server; start and stop it again on the hub that holds the lease."
            )
        watcher = self._watcher()
        keep = self._keeps_stopped()
        if keep:
            try:
                await self.aws.call("ec2", "StopInstances", InstanceIds=[iid])
            except AwsError as error:
                if error.kind is ErrorKind.NOT_FOUND:
                    keep = False
                elif error.code == "IncorrectInstanceState":  # e.g. still pending: cannot stop it
                    keep = False
                    await self._terminate(iid)
                else:
                    raise
        else:
            await self._terminate(iid)
        await self._close_spend(iid)
        await self._delete_secret(iid)
        if not now:
            final = ("stopped", "terminated") if keep else ("terminated",)
            try:
                await watcher.wait_for(iid, lambda v: v is None or v.state in final, timeout=self.stop_timeout)
            except TimeoutError:
                self.log.warning("%s: %s not %s after %.0f s; not waiting longer",
                                 self._log_name, iid, " or ".join(final), self.stop_timeout)
        self.log.info("%s: %s %s", self._log_name, "stopped" if keep else "terminated", iid)
        self.kept_instance_id = iid if keep else None
        self.instance_id = None

    async def _terminate(self, iid: str) -> None:
        await self.aws.call("ec2", "TerminateInstances", InstanceIds=[iid], ignore={ErrorKind.NOT_FOUND})

    async def _delete_secret(self, iid: str) -> None:
        await self.aws.call("ssm", "DeleteParameter", Name=req.secret_name(self.site_secret_prefix, iid),
                            ignore={ErrorKind.NOT_FOUND})

    async def rename(self, old_name, new_name):
        """Retag this server's instances before JupyterHub renames the server.

        JupyterHub 6 calls this from ``PATCH /users/:user/servers/:name`` with a new ``name``,
        only for a server that is not active (apihandlers/users.py), so what is retagged here is
        an instance kept stopped for it (``stop_mode = "stop"``). The tags keep naming their server
        and the next start resumes it under the new name.
        """
        if not await self._may_act("retagging for a rename"):
            raise LeaseError(f"{self._log_name}: not renamed: {self.lease().describe()}")
        snapshot = await self._watcher().fresh()
        for view in snapshot.values():
            if self._is_mine(view) and view.state not in req.GONE_STATES:
                self.log.info("%s: server renamed to %r, retagging %s", self._log_name, new_name, view.instance_id)
                await self.aws.call("ec2", "CreateTags", Resources=[view.instance_id], Tags=req.rename_tags(
                    hub_id=self.hub_id, user=self.user.name, server=new_name))

    async def delete_forever(self):
        """The server is deleted: remove any instance kept for it (stop_mode=stop) and its secret.

        On a hub without the lease nothing is terminated: the lease holder's sweeper ends the
        instance of a server that no longer exists after ``orphan_grace``.
        """
        if not await self._may_act("terminating the instances of a deleted server"):
            self.kept_instance_id = None
            return
        watcher = self._watcher()
        snapshot = await watcher.fresh()
        for view in snapshot.values():
            if self._is_mine(view) and view.state not in req.GONE_STATES:
                self.log.info("%s: deleted, terminating %s", self._log_name, view.instance_id)
                await self._terminate(view.instance_id)
                await self._delete_secret(view.instance_id)
        self.kept_instance_id = None

    async def progress(self):
        """Every phase of the current start as ``{"message", "progress"}`` events, from the first;
        may be subscribed to before ``start()`` runs, and ends when ``start()`` has ended."""
        seen = 0
        while True:
            while seen < len(self._events):
                yield self._events[seen]
                seen += 1
            if self._start_done:
                return
            self._progress_changed.clear()
            await self._progress_changed.wait()


def start_sweeper_with_hub() -> asyncio.Task | None:
    """Start the orphan sweeper when JupyterHub has started, not at the first spawn.

    JupyterHub 6 loads its config file inside its running event loop (``JupyterHub.initialize``
    is a coroutine run by ``launch_instance``) and resolves ``JupyterHub._start_future`` at the
    end of ``JupyterHub.start()``, once the database, init_spawners' checks and the proxy are up.
    Called from the config (``hubconfig.apply_settings``), this schedules a task that waits for
    that future and then starts the hub lease's renewal (if ``lease_table`` is set) and the
    sweeper with the hub's database session, and the server culler. Outside a running
    hub (tests of the config, ``--generate-config``) it does nothing and returns None.
    """
    from jupyterhub.app import JupyterHub

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if not JupyterHub.initialized():
        return None
    app = JupyterHub.instance()
    started = getattr(app, "_start_future", None)
    if started is None:  # a JupyterHub other than 6.x: say so rather than sweep nothing silently
        app.log.warning("ec2hub: JupyterHub has no _start_future; the orphan sweeper is not started")
        return None

    async def sweep_once_started():
        await started
        spawner_class = app.spawner_class
        if not (isinstance(spawner_class, type) and issubclass(spawner_class, EC2Spawner)):
            return
        # The lease first (its renewal runs from now on); the sweeper waits for its first answer.
        probe = spawner_class(config=app.config, log=app.log)
        probe.lease()
        probe._spend_recorder()  # bills the servers init_spawners re-attached
        spawner_class.start_sweeper(config=app.config, db=app.db, log=app.log)
        # Per-class idle_timeout and max_age (ec2spawner.culler), in place of jupyterhub-idle-culler.
        ServerCuller.start_with(app, interval=probe.cull_interval, log=app.log)

    return loop.create_task(sweep_once_started(), name="ec2hub-start-sweeper")


async def _settle(future: asyncio.Future | None) -> None:
    """Wait for a cleanup to end, whatever its outcome (its own callback logs a failure); a
    cancellation of the waiter leaves it running."""
    if future is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(future)


def _describe_error(error: BaseException) -> str:
    if isinstance(error, SpawnException):
        return error.message
    if isinstance(error, asyncio.CancelledError | asyncio.TimeoutError):
        return "timed out or cancelled"
    return str(error) or type(error).__name__


def _spawn_error(error: AwsError) -> SpawnException:
    """An AWS failure as a message a user understands, with the AWS detail in the log."""
    detail = f"{error.operation}: {error.code}: {error.message}"
    if error.kind is ErrorKind.QUOTA:
        message = ("The AWS account has reached a limit for this instance class "
                   f"({error.code}). Ask an administrator to raise the quota, or pick a smaller class.")
        return SpawnException(message, reason="quota", status_code=503, log_message=detail)
    if error.kind is ErrorKind.UNAUTHORIZED:
        return SpawnException("The hub is not allowed to start this instance; an administrator "
                              "should check the hub's IAM role.", reason="aws-permission",
                              status_code=500, log_message=detail)
    if error.kind is ErrorKind.THROTTLED:
        return SpawnException("AWS is busy (request limit); try again in a minute.",
                              reason="throttled", status_code=503, log_message=detail)
    return SpawnException(f"AWS refused to start the server: {error.code}. An administrator "
                          "can find the details in the hub log.", reason="aws-error",
                          status_code=500, log_message=detail)
