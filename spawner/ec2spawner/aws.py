"""The one seam between the spawner and AWS.

Every AWS call of the package goes through :meth:`Aws.call` (or :meth:`Aws.describe_instances`),
which runs boto3 on the seam's own thread pool, one thread per pooled HTTP connection
(``max_pool_connections``), so the hub's event loop never waits on the network and 50 calls in
flight are not capped at the loop's default executor (CPUs + 4 threads). It maps botocore's error
codes to an :class:`ErrorKind` the spawner can act on, and ``ignore=`` says once which kinds a
caller treats as success (``{ErrorKind.NOT_FOUND}`` for "already gone"). Clients
are created lazily, once per region and service, and shared by every spawner of the process;
botocore's ``standard`` retry mode retries throttling and transient errors on its own.

A client-side limiter shaped like EC2's own token buckets (RunInstances: 5 requests burst, refilled
at 2 per second; see https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html)
queues calls before they are sent, so 100 users pressing "Start" together wait their turn instead
of failing with ``RequestLimitExceeded``.

A seam is for one region of one account: the hub's own (:meth:`Aws.for_region`, the hub's
credentials), or a target's (:meth:`Aws.for_role`: credentials of a role the hub assumes in another
account with ``sts:AssumeRole`` and an external id, fetched at the first call and refreshed by
botocore before they expire; see :class:`AssumedRole`). Each has its own clients, limiters and
thread pool: EC2's request limits are per account and region.

No sandbox knowledge here: boto3 honours ``AWS_ENDPOINT_URL`` and the config file's
``endpoint_url`` natively, which is how tests and the sandbox point it at an emulator.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import enum
import functools
import gc
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import boto3
import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.model
import botocore.parsers
import botocore.session


class ErrorKind(enum.Enum):
    CAPACITY = "capacity"  # EC2 has no capacity for this type in this AZ right now
    THROTTLED = "throttled"  # request rate limit; wait and retry
    QUOTA = "quota"  # an account limit (vCPU, instance count, spot count)
    NOT_FOUND = "not-found"
    ALREADY_EXISTS = "already-exists"
    UNAUTHORIZED = "unauthorized"  # IAM said no
    INVALID = "invalid"  # a bad request: misconfiguration, not the user's doing
    OTHER = "other"


_KINDS = {
    ErrorKind.CAPACITY: {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacityOnOutpost",
        # The type is not offered in this AZ: as good as no capacity there, try the next AZ.
        "Unsupported",
        "SpotMaxPriceTooLow",
        # The subnet has no free private address: another AZ's subnet may (a quota would not).
        "InsufficientFreeAddressesInSubnet",
    },
    ErrorKind.THROTTLED: {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyUpdates",
    },
    ErrorKind.QUOTA: {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "ParameterLimitExceeded",
        "AccessPointLimitExceeded",
    },
    ErrorKind.NOT_FOUND: {
        "InvalidInstanceID.NotFound",
        "ParameterNotFound",
        "InvalidLaunchTemplateId.NotFound",
        "InvalidLaunchTemplateName.NotFoundException",
        "FileSystemNotFound",
        "AccessPointNotFound",
    },
    # EFS: a CreateAccessPoint whose ClientToken made one already.
    ErrorKind.ALREADY_EXISTS: {"ParameterAlreadyExists", "AccessPointAlreadyExists"},
    ErrorKind.UNAUTHORIZED: {
        "UnauthorizedOperation",
        "AccessDenied",
        "AccessDeniedException",
        "AuthFailure",
        "InvalidClientTokenId",
        "ExpiredToken",
    },
    ErrorKind.INVALID: {
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "InvalidParameter",
        "IdempotentParameterMismatch",
        "InvalidLaunchTemplateId.Malformed",
        "InvalidSubnetID.NotFound",
        "ValidationException",
        "BadRequest",  # EFS's
        "IncorrectFileSystemLifeCycleState",
    },
}
_KIND_OF = {code: kind for kind, codes in _KINDS.items() for code in codes}


def classify(code: str) -> ErrorKind:
    """What an AWS error code means for the spawner."""
    return _KIND_OF.get(code, ErrorKind.OTHER)


class AwsError(Exception):
    """An AWS call failed; ``kind`` says what it means, ``code`` is AWS's own error code."""

    def __init__(self, operation: str, code: str, message: str):
        self.operation = operation
        self.code = code
        self.message = message
        self.kind = classify(code)
        super().__init__(f"{operation}: {code}: {message}")


class TokenBucket:
    """A request-rate limiter shaped like EC2's token buckets, for one event loop or many.

    Implemented as a virtual-scheduling cell rate algorithm: each caller reserves the next slot
    synchronously (no lock, so it works across event loops), then sleeps until its slot. Order of
    arrival is order of service.
    """

    def __init__(self, burst: int, per_second: float):
        self.burst = burst
        self.per_second = per_second
        self._interval = 1.0 / per_second
        self._tolerance = (burst - 1) * self._interval
        self._next = 0.0  # theoretical arrival time of the next request
        self._lock = threading.Lock()

    def reserve(self, now: float | None = None) -> float:
        """Take a slot; return how many seconds to wait before using it."""
        with self._lock:
            now = time.monotonic() if now is None else now
            self._next = max(self._next, now)
            wait = max(0.0, self._next - self._tolerance - now)
            self._next += self._interval
            return wait

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)


# Client-side limits, a little under EC2's published request buckets so jitter between our clock
# and EC2's never spends a token EC2 does not have (one token of burst kept in reserve).
DEFAULT_LIMITS: dict[str, tuple[int, float]] = {
    "RunInstances": (4, 2.0),
    "StartInstances": (4, 2.0),
    "TerminateInstances": (49, 5.0),
    "StopInstances": (49, 5.0),
}


@dataclass(frozen=True, slots=True)
class InstanceView:
    """What the spawner needs to know about one instance, from DescribeInstances.

    Small on purpose (slots, shared strings): a hub holds one per instance, 5,000 and more.
    :data:`VIEW_FIELDS` is what :meth:`from_api` reads, and all that the watcher's describe parses.
    """

    instance_id: str
    state: str
    instance_type: str = ""
    availability_zone: str = ""
    subnet_id: str = ""
    private_ip: str = ""
    public_ip: str = ""
    private_dns: str = ""
    public_dns: str = ""
    launch_time: datetime | None = None
    owner_id: str = ""
    state_reason_code: str = ""
    state_reason_message: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, instance: dict, owner_id: str = "") -> InstanceView:
        reason = instance.get("StateReason") or {}
        shared = sys.intern  # values most instances have in common are held once
        return cls(
            instance_id=instance["InstanceId"],
            state=shared(instance["State"]["Name"]),
            instance_type=shared(instance.get("InstanceType", "")),
            availability_zone=shared((instance.get("Placement") or {}).get("AvailabilityZone", "")),
            subnet_id=shared(instance.get("SubnetId", "")),
            private_ip=instance.get("PrivateIpAddress", ""),
            public_ip=instance.get("PublicIpAddress", ""),
            private_dns=instance.get("PrivateDnsName", ""),
            public_dns=instance.get("PublicDnsName", ""),
            launch_time=instance.get("LaunchTime"),
            owner_id=shared(owner_id),
            state_reason_code=shared(reason.get("Code", "")),
            state_reason_message=reason.get("Message", ""),
            tags={shared(t["Key"]): t["Value"] for t in instance.get("Tags", [])},
        )


# What InstanceView.from_api reads of a DescribeInstances answer, by the API's member names (a
# nested dict is a structure's members; a list's members are its items'). The watcher's describe
# asks botocore to parse these and nothing else: a 1,000-instance page holds ~100 fields per
# instance (network interfaces, block devices, three timestamps), and parsing all of them cost
# ~1.2 s of CPU per 1,000 instances, measured by benchmarks/poll_cost.py.
VIEW_FIELDS: dict = {
    "NextToken": None,
    "Reservations": {
        "OwnerId": None,
        "Instances": {
            "InstanceId": None,
            "State": {"Name": None},
            "InstanceType": None,
            "Placement": {"AvailabilityZone": None},
            "SubnetId": None,
            "PrivateIpAddress": None,
            "PublicIpAddress": None,
            "PrivateDnsName": None,
            "PublicDnsName": None,
            "LaunchTime": None,
            "StateReason": {"Code": None, "Message": None},
            "Tags": {"Key": None, "Value": None},
        },
    },
}


def project_shape(shape: botocore.model.Shape, fields: dict | None) -> botocore.model.Shape:
    """A copy of a botocore output shape that has only ``fields``' members (None: all of it).

    botocore's parser walks a structure's ``members`` and a list's ``member``; both are cached
    properties, so a shallow copy with them replaced parses only what is kept, with the model's
    own XML names and types.
    """
    if fields is None:
        return shape
    pruned = copy.copy(shape)
    if isinstance(shape, botocore.model.ListShape):
        pruned.__dict__["member"] = project_shape(shape.member, fields)
    elif isinstance(shape, botocore.model.StructureShape):
        pruned.__dict__["members"] = {name: project_shape(shape.members[name], sub) for name, sub in fields.items()}
    return pruned


# A DescribeInstances page of 1,000 instances is about 2.7 MB of XML. botocore hands it to expat in
# one ``feed`` call, a single C call that holds the GIL for ~90 ms and so stalls the hub's event loop
# even though it runs in a worker thread. Fed in 64 KiB pieces, the worker gives the GIL back
# between pieces and the loop never waits more than a few milliseconds.
_XML_CHUNK = 64 * 1024


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _cyclic_gc_paused():
    """Hold off CPython's cyclic garbage collector while an EC2 response is parsed.

    Parsing a 1,000-instance page allocates a few hundred thousand objects that live until the
    parse ends; that many survivors trigger a full (generation 2) collection, which walks every
    object of the hub process while holding the GIL: ~100 ms with 1,000 spawners loaded, measured
    by benchmarks/poll_cost.py. The parse tree is acyclic and freed by reference counting, so
    pausing the collector for the parse frees the same memory without the pause. Nested and
    concurrent users are counted; the collector is re-enabled only if it was enabled before.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


_views_only = threading.local()  # set while this thread describes instances for InstanceViews


@contextlib.contextmanager
def _parsing_views_only():
    _views_only.on = True
    try:
        yield
    finally:
        _views_only.on = False


def _fast_timestamp(text: str) -> datetime:
    # EC2 writes ISO 8601 in UTC ("2026-12-01T13:00:00.000Z"); the standard library parses that
    # ~30 times faster than botocore's default (dateutil). Anything else goes to botocore.
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return botocore.parsers.DEFAULT_TIMESTAMP_PARSER(text)


class _ChunkedEC2Parser(botocore.parsers.EC2QueryParser):
    def __init__(self, timestamp_parser=None, blob_parser=None):
        super().__init__(timestamp_parser or _fast_timestamp, blob_parser)
        self._view_shape: botocore.model.Shape | None = None  # the projection, made once

    def parse(self, response, shape):
        if shape is not None and shape.name == "DescribeInstancesResult" and getattr(_views_only, "on", False):
            if self._view_shape is None:
                self._view_shape = project_shape(shape, VIEW_FIELDS)
            shape = self._view_shape
        # Only the parse: the network call and botocore's retries run with the collector on.
        with _cyclic_gc_paused():
            return super().parse(response, shape)

    def _parse_xml_string_to_dom(self, xml_string):
        from xml.etree import ElementTree
        from xml.etree.ElementTree import ParseError

        try:
            parser = ElementTree.XMLParser(target=ElementTree.TreeBuilder(), encoding=self.DEFAULT_ENCODING)
            for start in range(0, len(xml_string), _XML_CHUNK):
                parser.feed(xml_string[start : start + _XML_CHUNK])
            return parser.close()
        except ParseError as error:
            raise botocore.parsers.ResponseParserError(
                f"Unable to parse response ({error}), invalid XML received. Further retries may succeed"
            ) from None


class _ParserFactory(botocore.parsers.ResponseParserFactory):
    def create_parser(self, protocol_name):
        if protocol_name == "ec2":
            return _ChunkedEC2Parser(**self._defaults)
        return super().create_parser(protocol_name)


@dataclass(frozen=True)
class AssumedRole:
    """A role in another account the hub's own credentials assume (``sts:AssumeRole``).

    ``external_id`` is required by the role's trust policy (infra/target_stack.py);
    ``session_name`` names the hub in the target account's CloudTrail. Credentials last
    ``duration_s`` (AWS allows 900 up to the role's maximum, 3,600 by default). ``sts_region``:
    the STS endpoint asked (None: the seam's region); the hub asks its own region's, which its
    VPC reaches like its other AWS APIs (temporary credentials are valid in every region).
    """

    role_arn: str
    external_id: str
    session_name: str = "ec2hub"
    duration_s: int = 3600
    sts_region: str | None = None


class _AssumedRoleProvider(botocore.credentials.CredentialProvider):
    """A provider in a botocore session's chain that answers with one role's credentials."""

    METHOD = "ec2hub-assume-role"

    def __init__(self, credentials: botocore.credentials.Credentials):
        super().__init__()
        self._credentials = credentials

    def load(self):
        return self._credentials


class _SourceCredentials:
    """The process's own credentials, resolved at the first AssumeRole (in the seam's worker
    thread: on the hub host that is a call to the instance metadata service), not when the seam
    is made on the event loop."""

    def __init__(self, session: botocore.session.Session):
        self._session = session
        self._credentials = None
        self._lock = threading.Lock()

    def get_frozen_credentials(self):
        with self._lock:
            if self._credentials is None:
                self._credentials = self._session.get_credentials()
            if self._credentials is None:
                raise botocore.exceptions.NoCredentialsError()
        return self._credentials.get_frozen_credentials()


def assumed_role_credentials(role: AssumedRole, region: str) -> botocore.credentials.RefreshableCredentials:
    """Credentials of ``role``, assumed with the process's own credentials (the hub's role).

    botocore's own parts, as its ``assume_role`` profile provider uses them: the fetcher calls
    AssumeRole (STS of ``region``) and keeps the answer until 15 minutes before it expires;
    :class:`~botocore.credentials.DeferredRefreshableCredentials` asks it at first use and again
    once fewer than 15 minutes are left (every client call made after that waits for the refresh
    only when fewer than 10 are left). Nothing is asked at construction.
    """
    source = botocore.session.get_session()
    source.set_config_variable("region", role.sts_region or region)
    fetcher = botocore.credentials.AssumeRoleCredentialFetcher(
        source.create_client,
        _SourceCredentials(source),
        role.role_arn,
        extra_args={"ExternalId": role.external_id, "RoleSessionName": role.session_name[:64],
                    "DurationSeconds": role.duration_s},
    )
    return botocore.credentials.DeferredRefreshableCredentials(
        refresh_using=fetcher.fetch_credentials, method=_AssumedRoleProvider.METHOD)


class Aws:
    """AWS calls for one region of one account, shared by every spawner of the process (see
    :meth:`for_region` and :meth:`for_role`)."""

    _shared: ClassVar[dict[Any, Aws]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, region: str, *, role: AssumedRole | None = None, max_pool_connections: int = 50):
        self.region = region
        self.role = role
        # What the watcher, sweeper and limiters are per: one account's region.
        self.key = region if role is None else f"{role.role_arn}@{region}"
        self.config = botocore.config.Config(
            region_name=region,
            retries={"mode": "standard"},
            max_pool_connections=max_pool_connections,
        )
        # One thread per pooled connection: more threads would only queue on the pool, fewer
        # would leave connections idle while calls wait for a thread.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_pool_connections,
                                            thread_name_prefix=f"ec2hub-aws-{region}")
        core = botocore.session.get_session()
        core.register_component("response_parser_factory", _ParserFactory())
        # None: the process's own credentials (instance profile, environment, config file).
        self.credentials = None if role is None else assumed_role_credentials(role, region)
        if self.credentials is not None:
            core.get_component("credential_provider").insert_before("env", _AssumedRoleProvider(self.credentials))
        self._session = boto3.session.Session(region_name=region, botocore_session=core)
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self.limiters = {op: TokenBucket(*shape) for op, shape in DEFAULT_LIMITS.items()}
        self.calls: dict[str, int] = {}  # operation -> count, for benchmarks and tests

    @classmethod
    def for_region(cls, region: str) -> Aws:
        """The process-wide instance for ``region``: one set of clients, one set of limiters."""
        with cls._shared_lock:
            if region not in cls._shared:
                cls._shared[region] = cls(region)
            return cls._shared[region]

    @classmethod
    def for_role(cls, region: str, role: AssumedRole) -> Aws:
        """The process-wide instance for ``region`` of the account ``role`` is in."""
        key = (region, role)
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls(region, role=role)
            return cls._shared[key]

    @property
    def partition(self) -> str:
        return self._session.get_partition_for_region(self.region)

    def client(self, service: str):
        # boto3 sessions are not thread safe; clients are, once made.
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = self._session.client(service, config=self.config)
            return self._clients[service]

    def _invoke(self, service: str, operation: str, params: dict) -> dict:
        """The one blocking call (runs in a worker thread). Tests patch this to inject faults."""
        method = getattr(self.client(service), _snake(operation))
        return method(**params)

    def _invoke_mapped(self, service: str, operation: str, params: dict) -> dict:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        try:
            return self._invoke(service, operation, params)
        except botocore.exceptions.ClientError as error:
            err = error.response.get("Error", {})
            raise AwsError(operation, err.get("Code", "Unknown"), err.get("Message", "")) from None

    def start_in_thread(self, func, *args) -> asyncio.Future:
        """Submit ``func(*args)`` to the seam's pool now; the future resolves on the running loop.
        Nothing can stop it once submitted (a thread cannot be interrupted, and the interpreter
        joins the pool at exit)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(func, *args))

    async def in_thread(self, func, *args):
        """Run ``func(*args)`` on the seam's pool. If the caller is cancelled, the call still runs
        to its end (see :meth:`start_in_thread`)."""
        return await self.start_in_thread(func, *args)

    async def submit(self, service: str, operation: str, **params) -> concurrent.futures.Future:
        """Send ``operation`` (after its limiter) and return its future without waiting for it.

        For calls that create something (RunInstances): whoever holds the future learns the
        outcome even if the coroutine that sent it is cancelled. Its exception is an
        :class:`AwsError` when AWS answered with an error.
        """
        limiter = self.limiters.get(operation)
        if limiter is not None:
            await limiter.acquire()
        return self._executor.submit(self._invoke_mapped, service, operation, params)

    async def call(
        self, service: str, operation: str, *, ignore: Collection[ErrorKind] = (), **params
    ) -> dict | None:
        """Call ``operation`` (API name, e.g. ``RunInstances``) off the event loop.

        Raises :class:`AwsError` for an error AWS answered, unless its kind is in ``ignore``
        (then returns None). Network failures propagate as botocore exceptions after botocore's
        own retries.
        """
        future = await self.submit(service, operation, **params)
        try:
            return await asyncio.wrap_future(future)
        except AwsError as error:
            if error.kind in ignore:
                return None
            raise

    def call_blocking(
        self, service: str, operation: str, *, ignore: Collection[ErrorKind] = (), **params
    ) -> dict | None:
        """:meth:`call` for code already running in a worker thread (no limiter, no loop)."""
        try:
            return self._invoke_mapped(service, operation, params)
        except AwsError as error:
            if error.kind in ignore:
                return None
            raise

    # EC2's largest DescribeInstances page (MaxResults 5..1000): 5,000 instances are 5 calls.
    describe_page_size = 1000

    def _describe_all_sync(self, filters: list[dict]) -> dict[str, InstanceView]:
        views: dict[str, InstanceView] = {}
        token = None
        while True:
            params: dict[str, Any] = {"Filters": filters, "MaxResults": self.describe_page_size}
            if token:
                params["NextToken"] = token
            with _parsing_views_only():
                page = self._invoke_mapped("ec2", "DescribeInstances", params)
            with _cyclic_gc_paused():  # as for the parse: thousands of acyclic objects in a row
                for reservation in page.get("Reservations", []):
                    owner = reservation.get("OwnerId", "")
                    for instance in reservation.get("Instances", []):
                        view = InstanceView.from_api(instance, owner)
                        views[view.instance_id] = view
            token = page.get("NextToken")
            if not token:
                return views

    def _describe_views_sync(self, filters: list[dict], previous: dict[str, InstanceView]) -> dict[str, InstanceView]:
        views = self._describe_all_sync(filters)
        with _cyclic_gc_paused():
            for iid, view in views.items():
                if previous.get(iid) == view:
                    views[iid] = previous[iid]
        return views

    async def describe_instances(
        self, filters: list[dict], previous: dict[str, InstanceView] | None = None
    ) -> dict[str, InstanceView]:
        """Every instance matching ``filters``, all pages (``describe_page_size`` each), as
        InstanceViews; only :data:`VIEW_FIELDS` of the answer is parsed, in the worker thread.

        With ``previous`` (the last answer), an instance that did not change keeps its view
        object: a refresh of thousands of unchanged instances leaves nothing new to collect or
        free on the event loop.
        """
        return await self.in_thread(self._describe_views_sync, filters, previous or {})

    def _describe_parameters_sync(self, filters: list[dict]) -> dict[str, datetime | None]:
        found: dict[str, datetime | None] = {}
        token = None
        while True:
            params: dict[str, Any] = {"ParameterFilters": filters, "MaxResults": 50}
            if token:
                params["NextToken"] = token
            page = self._invoke_mapped("ssm", "DescribeParameters", params)
            for p in page.get("Parameters", []):
                found[p["Name"]] = p.get("LastModifiedDate")
            token = page.get("NextToken")
            if not token:
                return found

    async def describe_parameters(self, filters: list[dict]) -> dict[str, datetime | None]:
        """Parameter name -> last modified, for every parameter matching ``filters``."""
        return await self.in_thread(self._describe_parameters_sync, filters)


def _snake(operation: str) -> str:
    """``RunInstances`` -> ``run_instances`` (botocore's own mapping)."""
    from botocore import xform_name

    return xform_name(operation)
