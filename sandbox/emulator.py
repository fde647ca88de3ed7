"""An AWS emulator for ec2hub: moto in server mode plus the EC2 behaviours moto lacks.

moto answers the AWS API but every instance is ``running`` at its first describe, there is no
capacity or throttling error, and ``ClientToken`` is not idempotent. This module patches the moto
classes of the process that runs the server (so use it in-process through
:func:`start_emulator`, or as ``python -m sandbox.emulator``) to add:

* a pending period: an instance reports ``pending`` until ``launch + pending_s``, then ``running``;
  stop goes ``stopping`` -> ``stopped`` and terminate ``shutting-down`` -> ``terminated`` after
  ``stopping_s`` / ``shutting_down_s`` (0 = immediately, moto's own behaviour);
* ``InsufficientInstanceCapacity`` for chosen (availability zone, instance type) pairs;
* ``RequestLimitExceeded`` on RunInstances from a token bucket shaped like EC2's (5 burst, 2/s);
* ``ClientToken`` idempotency: a repeated token returns the first call's reservation;
* EFS access points as EFS answers: ``FileSystemNotFound`` for a file system that does not
  exist, ``AccessPointAlreadyExists`` for a ``ClientToken`` that made one already;
* terminating an instance behind the hub's back, and spot interruption (terminated with
  StateReason ``Server.SpotInstanceTermination``);
* state-change events (``running``, ``stopped``, ``terminated``) to in-process listeners and over
  HTTP, for the sandbox's simulated data plane, and a ``rebooting`` event on RebootInstances of a
  running instance (EC2 keeps it ``running``; the data plane reboots its host through systemd);
* a ``visibility_lag_s`` during which an instance RunInstances just made is not listed, and
  DescribeInstances, TerminateInstances, StopInstances and StartInstances naming it answer
  ``InvalidInstanceID.NotFound`` (EC2's eventual consistency right after a launch);
* InsufficientInstanceCapacity on StartInstances too (a stopped instance resumed in an AZ that has
  no capacity for its type), and a ``start_lag_s`` during which a started instance is still
  described as ``stopped`` (EC2's eventual consistency);
* an outage: for N seconds every AWS call (EC2, SSM, STS; not the control paths) is answered by
  closing the connection without a response, a connection-level error as when the endpoint is
  unreachable; it ends by itself;
* DescribeInstances paged as EC2 pages it: ``MaxResults`` (5 to 1,000) counts instances, with
  filters too (moto counts reservations and, with a filter, a 250-instance launch is one item),
  a reservation split across pages where a page ends; ``NextToken`` resumes after the last
  instance returned, in launch order, whatever changed in between; no ``MaxResults``: every
  match in one answer (see :func:`page_instances`);
* holds, to reach a point of a client's work deterministically: an AWS call (by action, optionally
  only when its raw request body contains a string) waits in the emulator until released, then
  runs or is dropped unanswered (as if it never reached AWS); a transition (``pending``,
  ``stopping``, ``shutting-down``) of a matching instance does not end while its hold exists.
  Every call is counted by action (``calls`` in the state), so a client can wait for one.
* a launch template's ``IamInstanceProfile`` and ``MetadataOptions`` on an instance launched from
  it (RunInstances, or an Auto Scaling group's launch), as EC2 applies them; moto ignores both;
* an instance registered in a target group while still ``pending`` (an Auto Scaling group's
  launch; moto refuses any instance that is not ``running``);
* CloudFormation's ``SignalResource``, which moto does not have: each signal is recorded (stack,
  logical id, unique id, status) and answered as CloudFormation does; ``signals`` lists them.
* accounts by credentials, as AWS tells them: moto keeps separate state per account and files the
  temporary key of an ``AssumeRole`` under the account of the role's ARN; a key it never issued
  (the sandbox's own ``sandbox`` key, an instance role's IMDS credentials in the hub's account)
  is ``default_account``'s, where moto would say 123456789012. Unlike ``MOTO_ACCOUNT_ID``, which
  puts every call in one account, this lets the hub's assumed role act in a target account.
* EC2's instances and DynamoDB take turns, as AWS applies each call atomically where moto's
  backends are not thread-safe: a launch (RunInstances, or an Auto Scaling group's), a describe
  and every lookup by id hold :data:`_INSTANCES_TURN` (two launches in one subnet advanced moto's
  shared IP generator at once), and DynamoDB's calls take turns (a failed transaction restored a
  whole-table copy over a concurrent write);
* DescribeInstances' ``client-token`` filter, which moto lacks;
* a trail of every call that may change something (any action but ``Describe*``, ``Get*``,
  ``List*``), as CloudTrail's management events record who made it: the action, the caller's
  access key id (from the request's signature; the sandbox's IMDS gives each instance its own,
  :func:`sandbox.imds.instance_access_key`) and the instance ids the request names.

Control in-process through the :class:`Emulator` methods, or over HTTP on the same port
(``EmulatorClient`` speaks it)::

    GET  /_ec2hub/state                       current faults and counters
    POST /_ec2hub/faults    {"pending_s": 5, "stopping_s": 0, "shutting_down_s": 0, "start_lag_s": 0,
                             "visibility_lag_s": 0,
                             "capacity": [{"az": "us-east-1a", "instance_type": "g5.xlarge"}],
                             "clear_capacity": true,
                             "throttle": {"burst": 5, "per_second": 2} | null}
    POST /_ec2hub/terminate {"instance_id": "i-...", "spot": false}
    POST /_ec2hub/outage    {"seconds": 10}          (0 ends an outage now)
    POST /_ec2hub/holds     {"action": "RunInstances", "contains": "alice"}  -> {"id": 1, ...}
    POST /_ec2hub/release   {"id": 1, "drop": false}
    GET  /_ec2hub/events?after=<seq>&timeout=<s>   long poll: events with seq > after
    GET  /_ec2hub/signals                     the SignalResource calls received, in order
    GET  /_ec2hub/trail                       the calls that may change something, in order

Only one emulator is active per process at a time (the moto patches are process-wide).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import io
import json
import logging
import os
import queue
import re
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_ec2hub/"
SPOT_REASON = ("Server.SpotInstanceTermination: Spot instance termination", "Server.SpotInstanceTermination")
_STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
_MAX_EVENTS = 100_000
# Transitions a hold can keep from ending (see Emulator.hold).
_TRANSITIONS = ("pending", "stopping", "shutting-down")
# Actions that only read, which the trail leaves out (as CloudTrail's write-only event selector).
_READ_ONLY_PREFIXES = ("Describe", "Get", "List")
_MAX_TRAIL = 100_000
_ACCESS_KEY = re.compile(r"Credential=([A-Za-z0-9]+)/")


# DescribeInstances' MaxResults range, from the EC2 API reference of DescribeInstances.
PAGE_MIN, PAGE_MAX = 5, 1000


class Dropped(ConnectionError):
    """Raised inside the WSGI app to end a connection with no response (werkzeug ignores it)."""


@dataclass
class Hold:
    """An AWS call or a transition held until released (see :meth:`Emulator.hold`)."""

    id: int
    action: str
    contains: str = ""
    waiting: int = 0  # calls held right now
    held: int = 0  # calls (or transitions) it has ever held
    released: bool = False
    drop: bool = False
    seen: set[str] = field(default_factory=set)  # instances whose transition it has held

    def matches(self, action: str, text: str) -> bool:
        return not self.released and self.action == action and self.contains in text

    def model(self) -> dict:
        return {"id": self.id, "action": self.action, "contains": self.contains, "waiting": self.waiting,
                "held": self.held, "released": self.released, "drop": self.drop}


class _Bucket:
    """EC2's request token bucket: ``burst`` tokens, refilled at ``per_second``."""

    def __init__(self, burst: int, per_second: float):
        self.burst = burst
        self.per_second = per_second
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _Tracked:
    instance: Any
    due: float | None = None  # when the current transitional state ends
    target: str | None = None  # the state it ends in
    reason: tuple[str, str] | None = None
    then: tuple[str, str, float] | None = None  # (transitional, final, delay) entered after target


@dataclass
class Emulator:
    """A running emulator. Create with :func:`start_emulator`."""

    host: str
    port: int
    pending_s: float = 0.0
    stopping_s: float = 0.0
    shutting_down_s: float = 0.0
    capacity_faults: set[tuple[str, str]] = field(default_factory=set)
    throttle: _Bucket | None = None
    start_lag_s: float = 0.0
    visibility_lag_s: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    outage_until: float = 0.0
    _launched: dict[str, float] = field(default_factory=dict)  # instance id -> monotonic launch time
    _holds: dict[int, Hold] = field(default_factory=dict)
    _hold_ids: int = 0
    _hold_changed: threading.Condition = field(default_factory=threading.Condition)
    _server: Any = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _tracked: dict[str, _Tracked] = field(default_factory=dict)
    _tokens: dict[str, Any] = field(default_factory=dict)
    _events: list[dict] = field(default_factory=list)
    _seq: int = 0
    _listeners: list[Callable[[dict], None]] = field(default_factory=list)
    _new_event: threading.Condition = field(default_factory=threading.Condition)
    _ticker: threading.Thread | None = None
    _dispatcher: threading.Thread | None = None
    _dispatch: queue.Queue = field(default_factory=queue.Queue)
    _stopping: threading.Event = field(default_factory=threading.Event)
    signals: list[dict] = field(default_factory=list)  # SignalResource calls, in order
    # DynamoDB applies each write and transaction atomically; moto's backend does not (a
    # transaction snapshots whole tables with deepcopy and restores them on any error, so a
    # concurrent writer's update is lost). Its calls take turns here, as DynamoDB's would appear.
    _dynamodb_turn: threading.Lock = field(default_factory=threading.Lock)
    trail: list[dict] = field(default_factory=list)  # calls that may change something, in order

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- faults ---------------------------------------------------------------------------------

    def set_timing(self, *, pending_s: float | None = None, stopping_s: float | None = None,
                   shutting_down_s: float | None = None, start_lag_s: float | None = None,
                   visibility_lag_s: float | None = None) -> None:
        with self._lock:
            if visibility_lag_s is not None:
                self.visibility_lag_s = visibility_lag_s
            if start_lag_s is not None:
                self.start_lag_s = start_lag_s
            if pending_s is not None:
                self.pending_s = pending_s
            if stopping_s is not None:
                self.stopping_s = stopping_s
            if shutting_down_s is not None:
                self.shutting_down_s = shutting_down_s

    def add_capacity_fault(self, az: str, instance_type: str) -> None:
        """RunInstances of ``instance_type`` in ``az`` fails with InsufficientInstanceCapacity."""
        with self._lock:
            self.capacity_faults.add((az, instance_type))

    def clear_capacity_faults(self) -> None:
        with self._lock:
            self.capacity_faults.clear()

    def set_throttle(self, burst: int | None = 5, per_second: float = 2.0) -> None:
        """RunInstances beyond the bucket fails with RequestLimitExceeded; ``None`` turns it off."""
        with self._lock:
            self.throttle = None if burst is None else _Bucket(burst, per_second)

    def terminate(self, instance_id: str, *, spot: bool = False) -> None:
        """Terminate an instance behind the hub's back (``spot``: as a spot interruption)."""
        with _INSTANCES_TURN, self._lock:  # in this order, as a launch takes them
            tracked = self._tracked.get(instance_id)
            if tracked is None:
                raise KeyError(f"no such instance: {instance_id}")
            tracked.reason = SPOT_REASON if spot else None
            tracked.instance.terminate()  # patched: honours shutting_down_s, applies the reason
            if spot:
                self._set_reason(tracked, SPOT_REASON)

    def outage(self, seconds: float) -> None:
        """Every AWS call fails at connection level for ``seconds`` from now (0: end it now)."""
        with self._lock:
            self.outage_until = time.monotonic() + seconds if seconds > 0 else 0.0

    @property
    def in_outage(self) -> bool:
        return time.monotonic() < self.outage_until

    def hold(self, action: str, contains: str = "") -> Hold:
        """Hold every call of ``action`` whose raw request body contains ``contains`` until
        :meth:`release`; or, for ``action`` in ``pending``/``stopping``/``shutting-down``, keep a
        matching instance (its id or a ``key=value`` of its tags contains ``contains``) in that
        state. Calls that arrive are counted in the hold's ``held`` and ``waiting``."""
        with self._hold_changed:
            self._hold_ids += 1
            hold = self._holds[self._hold_ids] = Hold(self._hold_ids, action, contains)
            return hold

    def release(self, hold_id: int, *, drop: bool = False) -> Hold:
        """End a hold: its waiting calls run (``drop``: end unanswered, never reaching moto) and
        a held transition ends at its due time (or at once if that passed)."""
        with self._hold_changed:
            hold = self._holds[hold_id]
            hold.released, hold.drop = True, drop
            self._hold_changed.notify_all()
            return hold

    def holds(self) -> list[dict]:
        with self._hold_changed:
            return [h.model() for h in self._holds.values()]

    def _wait_if_held(self, action: str, text: str) -> None:
        """Block the calling request thread while a hold matches; raise Dropped if it is dropped."""
        with self._hold_changed:
            hold = next((h for h in self._holds.values() if h.matches(action, text)), None)
            if hold is None:
                return
            hold.held += 1
            hold.waiting += 1
            try:
                while not hold.released and not self._stopping.is_set():
                    self._hold_changed.wait(1.0)
            finally:
                hold.waiting -= 1
            if hold.drop:
                raise Dropped(f"{action} dropped by hold {hold.id}")

    def _transition_held(self, tracked: _Tracked) -> bool:
        state = tracked.instance._state.name
        if state not in _TRANSITIONS:
            return False
        with self._hold_changed:
            if not any(h.action == state and not h.released for h in self._holds.values()):
                return False
            tags = tracked.instance.get_tags() if hasattr(tracked.instance, "get_tags") else []
            text = " ".join([tracked.instance.id, *(f"{t['key']}={t['value']}" for t in tags)])
            for hold in self._holds.values():
                if hold.matches(state, text):
                    if tracked.instance.id not in hold.seen:
                        hold.seen.add(tracked.instance.id)
                        hold.held += 1
                    return True
        return False

    def count_call(self, action: str) -> None:
        with self._lock:
            self.calls[action] = self.calls.get(action, 0) + 1

    def record(self, action: str, environ: dict, form: dict[str, list[str]]) -> None:
        """Add a call to the trail unless it only reads: who (the access key id it was signed
        with), what, and the instance ids its form names (EC2's ``InstanceId.N``, Auto Scaling's
        ``InstanceId``)."""
        if action.startswith(_READ_ONLY_PREFIXES):
            return
        key = _ACCESS_KEY.search(environ.get("HTTP_AUTHORIZATION", ""))
        ids = sorted(v for k, values in form.items() if k == "InstanceId" or k.startswith("InstanceId.")
                     for v in values)
        with self._lock:
            self.trail.append({"seq": len(self.trail) + 1, "time": time.time(), "action": action,
                               "access_key_id": key.group(1) if key else "", "instance_ids": ids})
            del self.trail[:-_MAX_TRAIL]

    def state(self) -> dict:
        with self._lock:
            return {
                "endpoint_url": self.endpoint_url,
                "pending_s": self.pending_s,
                "stopping_s": self.stopping_s,
                "shutting_down_s": self.shutting_down_s,
                "start_lag_s": self.start_lag_s,
                "visibility_lag_s": self.visibility_lag_s,
                "outage_s": max(0.0, self.outage_until - time.monotonic()),
                "holds": self.holds(),
                "calls": dict(self.calls),
                "capacity": [{"az": az, "instance_type": t} for az, t in sorted(self.capacity_faults)],
                "throttle": None if self.throttle is None else
                {"burst": self.throttle.burst, "per_second": self.throttle.per_second},
                "counters": dict(self.counters),
                "instances": {iid: t.instance._state.name for iid, t in self._tracked.items()},
            }

    # -- events ---------------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``listener(event)`` on every state change; returns a function that unsubscribes.

        Events: ``{"seq", "time", "instance_id", "account", "state", "private_ip", "subnet_id",
        "instance_type", "reason"}`` for ``running``, ``stopped`` and ``terminated``. Listeners run
        one at a time, in order, on a dispatcher thread of their own and outside every emulator
        lock, so a listener may call the AWS API of this same emulator.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def events(self, after: int = 0, timeout: float = 0.0) -> list[dict]:
        """Events with ``seq > after``, waiting up to ``timeout`` seconds for the first one."""
        deadline = time.monotonic() + timeout
        with self._new_event:
            while True:
                found = [e for e in self._events if e["seq"] > after]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                self._new_event.wait(remaining)

    def _emit(self, tracked: _Tracked, state: str) -> None:
        inst = tracked.instance
        with self._new_event:
            self._seq += 1
            event = {
                "seq": self._seq,
                "time": time.time(),
                "instance_id": inst.id,
                "account": inst.owner_id,
                "state": state,
                "private_ip": getattr(inst, "private_ip", None),
                "subnet_id": getattr(inst, "subnet_id", None),
                "instance_type": inst.instance_type,
                "reason": inst.state_reason.code if inst.state_reason else "",
            }
            self._events.append(event)
            del self._events[:-_MAX_EVENTS]
            self._new_event.notify_all()
        self._dispatch.put(event)

    def _dispatch_forever(self) -> None:
        while True:
            event = self._dispatch.get()
            if event is None:
                return
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("emulator listener failed on %s", event)

    # -- state machine ----------------------------------------------------------------------------

    @staticmethod
    def _set_state(instance: Any, name: str) -> None:
        instance._state.name = name
        instance._state.code = _STATE_CODES[name]

    @staticmethod
    def _set_reason(tracked: _Tracked, reason: tuple[str, str]) -> None:
        from moto.ec2.models.instances import StateReason

        tracked.instance.state_reason = StateReason(*reason)
        tracked.instance._reason = reason[0]

    def _enter(self, instance: Any, transitional: str, final: str, delay: float) -> None:
        """Put ``instance`` in ``transitional`` for ``delay`` s, then ``final`` (now if delay <= 0)."""
        with self._lock:
            tracked = self._tracked.setdefault(instance.id, _Tracked(instance))
            self._set_state(instance, transitional)
            if delay > 0 or self._transition_held(tracked):
                tracked.due, tracked.target = time.monotonic() + delay, final
            else:
                self._set_state(instance, final)
                tracked.due = tracked.target = None
                if tracked.reason:
                    self._set_reason(tracked, tracked.reason)
                    tracked.reason = None
                self._emit(tracked, final)

    def tick(self) -> None:
        """Finish every transition that is due (called before each request and by a ticker)."""
        now = time.monotonic()
        with self._lock:
            for tracked in list(self._tracked.values()):
                if tracked.due is not None and tracked.due <= now and not self._transition_held(tracked):
                    self._set_state(tracked.instance, tracked.target)
                    if tracked.reason:
                        self._set_reason(tracked, tracked.reason)
                        tracked.reason = None
                    final, tracked.due, tracked.target = tracked.target, None, None
                    if tracked.then is not None:  # a lagging `stopped`, then the real start
                        (transitional, target, delay), tracked.then = tracked.then, None
                        self._enter(tracked.instance, transitional, target, delay)
                        continue
                    self._emit(tracked, final)

    def _tick_forever(self) -> None:
        while not self._stopping.wait(0.02):
            self.tick()

    # -- moto hooks -----------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def before_run_instances(self, backend: Any, kwargs: dict) -> Any | None:
        """Throttle, idempotency and capacity for RunInstances; a reservation to return, or None."""
        from moto.ec2.exceptions import EC2ClientError

        with self._lock:
            self._count("RunInstances")
            if self.throttle is not None and not self.throttle.take():
                self._count("RequestLimitExceeded")
                raise EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
            token = kwargs.get("client_token")
            if token and token in self._tokens:
                self._count("IdempotentReplay")
                return self._tokens[token]
            itype = kwargs.get("instance_type")
            if kwargs.get("is_instance_type_default") and kwargs.get("launch_template"):
                itype = backend._get_template_from_args(kwargs["launch_template"]).data.get("InstanceType", itype)
            az = kwargs.get("placement")
            if kwargs.get("subnet_id"):
                az = backend.get_subnet(kwargs["subnet_id"]).availability_zone
            if (az, itype) in self.capacity_faults:
                self._count("InsufficientInstanceCapacity")
                raise EC2ClientError(
                    "InsufficientInstanceCapacity",
                    f"We currently do not have sufficient {itype} capacity in the Availability Zone "
                    f"you requested ({az}). Our system will be working on provisioning additional "
                    "capacity.",
                )
        return None

    def after_run_instances(self, backend: Any, kwargs: dict, reservation: Any) -> None:
        if kwargs.get("launch_template"):
            _apply_template_options(backend, kwargs, reservation.instances)
        token = kwargs.get("client_token")
        with self._lock:
            if token:
                self._tokens[token] = reservation
            for instance in reservation.instances:
                self._launched[instance.id] = time.monotonic()
                self._enter(instance, "pending", "running", self.pending_s)

    def visible(self, instance_id: str) -> bool:
        """False while a just-launched instance is still unknown to EC2's read side."""
        launched = self._launched.get(instance_id)
        return launched is None or time.monotonic() - launched >= self.visibility_lag_s

    def before_start(self, instance: Any) -> None:
        """StartInstances of a stopped instance needs capacity for its type in its AZ, as EC2's does."""
        from moto.ec2.exceptions import EC2ClientError

        with self._lock:
            self._count("StartInstances")
            az = instance.availability_zone
            if (az, instance.instance_type) in self.capacity_faults:
                self._count("InsufficientInstanceCapacity")
                raise EC2ClientError(
                    "InsufficientInstanceCapacity",
                    f"Insufficient capacity. ({instance.instance_type} in {az})",
                )

    def after_start(self, instance: Any) -> None:
        with self._lock:
            if self.start_lag_s > 0:
                self._enter(instance, "stopped", "pending", self.start_lag_s)
                self._tracked[instance.id].then = ("pending", "running", self.pending_s)
            else:
                self._enter(instance, "pending", "running", self.pending_s)

    def stop(self) -> None:
        """Stop the server and the ticker; the moto patches stay installed but inactive."""
        global _ACTIVE
        self._stopping.set()
        with self._hold_changed:
            self._hold_changed.notify_all()
        self._dispatch.put(None)
        if self._server is not None:
            self._server.stop()
        if _ACTIVE is self:
            _ACTIVE = None
            _use_default_account(None)


def _next_token(instance_id: str) -> str:
    return base64.urlsafe_b64encode(f"after:{instance_id}".encode()).decode()


def _token_instance(token: str) -> str | None:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return text.removeprefix("after:") if text.startswith("after:") else None


def page_instances(
    reservations: list, order: dict[str, int], max_results: int | None, token: str | None
) -> tuple[list, str | None]:
    """One page of a DescribeInstances answer, counted in instances as EC2 counts them.

    ``reservations`` are the matching reservations (moto's filtered copies, launch order);
    ``order`` maps every instance id the account ever had to its launch position, so a token
    stays valid when the instance it names no longer matches (stopped, terminated, re-tagged).
    Returns the page's reservations (copies holding only the page's instances) and the token
    of the next page, None after the last. ``max_results`` None: everything, one page. Raises
    moto's EC2 errors for a MaxResults out of 5..1000 or a token this emulator did not issue.
    """
    from moto.ec2.exceptions import EC2ClientError, InvalidNextToken

    if max_results is not None and not PAGE_MIN <= max_results <= PAGE_MAX:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"Value ( {max_results} ) for parameter maxResults is invalid. "
            f"Expecting a value between {PAGE_MIN} and {PAGE_MAX}.",
        )
    after = -1
    if token:
        last = _token_instance(token)
        if last not in order:
            raise InvalidNextToken(token)
        after = order[last]
    room = max_results if max_results is not None else sum(len(r.instances) for r in reservations)
    page, last_id, more = [], None, False
    for reservation in reservations:
        fits = [i for i in reservation.instances if order.get(i.id, -1) > after]
        if not fits:
            continue
        if room <= 0:
            more = True
            break
        part = copy.copy(reservation)
        part.instances = fits[:room]
        page.append(part)
        room -= len(part.instances)
        last_id = part.instances[-1].id
        if len(part.instances) < len(fits):
            more = True
            break
    return page, (_next_token(last_id) if more else None)


def _apply_template_options(backend: Any, kwargs: dict, instances: list) -> None:
    """What EC2 takes from the launch template and moto does not: its instance profile and
    metadata options, unless the request gave its own (moto honours those)."""
    from moto.ec2.models.instances import MetadataOptions

    data = backend._get_template_from_args(kwargs["launch_template"]).data
    profile = data.get("IamInstanceProfile") or {}
    for instance in instances:
        if profile and not (kwargs.get("iam_instance_profile_arn") or kwargs.get("iam_instance_profile_name")):
            try:
                backend.associate_iam_instance_profile(
                    instance_id=instance.id,
                    iam_instance_profile_name=profile.get("Name"),
                    iam_instance_profile_arn=profile.get("Arn"),
                )
            except Exception as error:  # noqa: BLE001 (a profile moto's IAM lacks: launched without, as moto did)
                log.warning("emulator: %s: the launch template's instance profile %s: %s", instance.id, profile, error)
        if data.get("MetadataOptions") and not kwargs.get("metadata_options"):
            instance.metadata_options = MetadataOptions(
                {k: str(v) if isinstance(v, int) else v for k, v in data["MetadataOptions"].items()})


def signal_resource_answer(request_id: str) -> bytes:
    """CloudFormation's answer to SignalResource (query protocol, no result members)."""
    return (
        '<SignalResourceResponse xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/">'
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></SignalResourceResponse>"
    ).encode()


_ACTIVE: Emulator | None = None
_PATCHED = False
# moto's instance model is not thread-safe: a launch advances its subnet's shared IP generator
# (two at once: "generator already executing", a 500 whose HTML body botocore cannot parse) and
# adds to the reservations a describe iterates. Launches (through the API, an Auto Scaling group
# or a stack), describes and lookups by id take turns on it. A model lock, not one for every
# HTTP call: a stack update in moto runs for seconds inside its request, and the hub's lease
# renewals (DynamoDB) must not wait for it.
_INSTANCES_TURN = threading.RLock()


def _install_patches() -> None:
    """Wrap moto's instance model once per process; the wrappers act only while an emulator runs."""
    global _PATCHED
    if _PATCHED:
        return
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import InvalidParameterCombination
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.models.instances import Instance, InstanceBackend
    from moto.ec2.responses.instances import InstanceResponse
    from moto.ec2.utils import (
        EC2_PREFIX_TO_RESOURCE,
        filter_dict_attribute_mapping,
        get_prefix,
    )

    run_instances, all_reservations = InstanceBackend.run_instances, InstanceBackend.all_reservations
    describe_instances = InstanceResponse.describe_instances
    start, stop, terminate, reboot = Instance.start, Instance.stop, Instance.terminate, Instance.reboot

    def patched_run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        with _INSTANCES_TURN:
            emulator = _ACTIVE
            if emulator is None:
                return run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
            replay = emulator.before_run_instances(self, kwargs)
            if replay is not None:
                return replay
            reservation = run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
            emulator.after_run_instances(self, kwargs, reservation)
            return reservation

    def patched_all_reservations(self, filters=None):
        with _INSTANCES_TURN:
            reservations = all_reservations(self, filters)
        emulator = _ACTIVE
        if emulator is None or emulator.visibility_lag_s <= 0:
            return reservations
        shown = []
        for reservation in reservations:  # shallow copies: give each its own list
            reservation.instances = [i for i in reservation.instances if emulator.visible(i.id)]
            if reservation.instances:
                shown.append(reservation)
        return shown

    def patched_start(self):
        if _ACTIVE is not None:
            _ACTIVE.before_start(self)
        previous = start(self)
        if _ACTIVE is not None:
            _ACTIVE.after_start(self)
        return previous

    def patched_stop(self):
        previous = stop(self)
        if _ACTIVE is not None:
            _ACTIVE._enter(self, "stopping", "stopped", _ACTIVE.stopping_s)
        return previous

    def patched_terminate(self):
        already = self._state.name == "terminated"
        previous = terminate(self)
        if _ACTIVE is not None and not already:
            _ACTIVE._enter(self, "shutting-down", "terminated", _ACTIVE.shutting_down_s)
        return previous

    def patched_reboot(self):
        # moto's reboot makes any instance "running" again; EC2 reboots only a running one.
        was_running = self._state.name == "running"
        previous = reboot(self) if was_running else None
        if _ACTIVE is not None and was_running:
            with _ACTIVE._lock:
                _ACTIVE._emit(_ACTIVE._tracked.setdefault(self.id, _Tracked(self)), "rebooting")
        return previous

    def patched_describe_instances(self):
        # moto pages by reservation and defaults to 100 of them; EC2 counts instances (see
        # page_instances). The parameter checks are moto's own.
        if _ACTIVE is None:
            return describe_instances(self)
        with _INSTANCES_TURN:
            return paged_describe(self)

    def paged_describe(self):
        self.error_on_dryrun()
        if "InstanceId.1" in self.data and "MaxResults" in self.data:
            raise InvalidParameterCombination("The parameter instancesSet cannot be used with the parameter maxResults")
        filters = self._filters_from_querystring()
        instance_ids = self._get_param("InstanceIds", [])
        backend = self.ec2_backend
        if instance_ids:
            reservations = backend.get_reservations_by_instance_ids(instance_ids, filters=filters)
        else:
            reservations = backend.describe_instances(filters=filters)
        order = {i.id: n for n, i in enumerate(i for r in backend.reservations.values() for i in r.instances)}
        max_results = self._get_param("MaxResults")
        page, token = page_instances(reservations, order, None if max_results is None else int(max_results),
                                     self._get_param("NextToken"))
        return ActionResult({"Reservations": page, "NextToken": token})

    def tags_of(self):
        # moto's get_tags runs describe_tags over every tag of the account, a regular expression
        # per tag, for each resource: a tag-filtered DescribeInstances over 5,000 instances took
        # minutes. The same answer from one lookup (moto's resource-id pattern is exact).
        tags = self.ec2_backend.tags.get(self.id) if self.id else None
        if not tags:
            return []
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
        return [{"resource_id": self.id, "key": k, "value": v, "resource_type": kind} for k, v in tags.items()]

    # DescribeInstances' ``client-token`` filter (EC2 has it; moto raises NotImplementedError, a
    # 500): the spawner looks a launch up by its token when RunInstances' answer was lost.
    filter_dict_attribute_mapping["client-token"] = "client_token"
    _patch_efs()
    _patch_security_group_update()
    _patch_target_registration()
    InstanceBackend.run_instances = patched_run_instances
    InstanceResponse.describe_instances = patched_describe_instances
    TaggedEC2Resource.get_tags = tags_of
    Instance.start, Instance.stop, Instance.terminate = patched_start, patched_stop, patched_terminate
    Instance.reboot = patched_reboot
    # Every lookup by id (describe, terminate, stop, start) goes through all_reservations.
    InstanceBackend.all_reservations = patched_all_reservations
    _PATCHED = True


def _use_default_account(account: str | None) -> None:
    """The account of a key no IAM of moto holds (moto/iam/models.py ``get_account_id_from``, which
    moto/core/responses.py asks at each request, answers moto's ``DEFAULT_ACCOUNT_ID`` for it):
    ``account``, or moto's own again with None. A key an AssumeRole issued stays its role's account."""
    import moto.core
    import moto.iam.models as iam_models

    iam_models.DEFAULT_ACCOUNT_ID = account or moto.core.DEFAULT_ACCOUNT_ID


def _patch_target_registration() -> None:
    """An Auto Scaling group registers its instance in its target groups once EC2 runs it; moto's
    group registers it at launch, which moto's own check then refuses while the emulator keeps the
    instance ``pending``. A pending instance is registered (stopped and terminated are refused)."""
    from moto.elbv2.models import FakeTargetGroup

    register = FakeTargetGroup.register

    def patched_register(self, targets):
        pending = []
        for target in targets:
            instance = self.ec2_backend.get_instance_by_id(target["Id"])
            if instance is not None and instance.state == "pending":
                pending.append(target)
        for target in pending:
            self.targets[target["Id"]] = {"Id": target["Id"], "Port": target.get("Port", self.port)}
            self.deregistered_targets.pop(target["Id"], None)
        return register(self, [t for t in targets if t not in pending])

    FakeTargetGroup.register = patched_register


def _patch_security_group_update() -> None:
    """A stack update changes a security group's rules and tags in place, as CloudFormation does
    (AWS::EC2::SecurityGroup: SecurityGroupIngress, SecurityGroupEgress and Tags update with no
    interruption; only a new GroupName, GroupDescription or VpcId replaces the group). moto deletes
    and re-creates the group on any change, so what names its old id (a launch template, an Auto
    Scaling group's next instance) names a group that no longer exists: the two-account sandbox's
    update, which opens the hub API's port to the target's range, broke the hub's replacement."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.security_groups import SecurityGroup

    update = SecurityGroup.update_from_cloudformation_json.__func__

    def patched_update(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
        properties = cloudformation_json["Properties"]
        replaced = (properties.get("VpcId") != original_resource.vpc_id
                    or properties.get("GroupDescription") != original_resource.description
                    or properties.get("GroupName", original_resource.name) != original_resource.name)
        if _ACTIVE is None or replaced:
            return update(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name)
        backend = ec2_backends[account_id][region_name]
        group = original_resource
        group.ingress_rules = []  # the template's rules replace the group's (as CloudFormation's update)
        backend.tags.pop(group.id, None)
        for tag in properties.get("Tags", []):
            group.add_tag(tag["Key"], tag["Value"])
        for rule in properties.get("SecurityGroupIngress", []):
            source = {k: rule[name] for k, name in (("GroupId", "SourceSecurityGroupId"),
                                                     ("GroupName", "SourceSecurityGroupName")) if rule.get(name)}
            backend.authorize_security_group_ingress(
                group_name_or_id=group.id, ip_protocol=rule["IpProtocol"], from_port=rule.get("FromPort"),
                to_port=rule.get("ToPort"), ip_ranges=rule.get("CidrIp", []),
                source_groups=[source] if source else [], vpc_id=group.vpc_id)
        return group

    SecurityGroup.update_from_cloudformation_json = classmethod(patched_update)


def _patch_efs() -> None:
    """EFS access points as EFS answers (EFS API reference, CreateAccessPoint, DescribeAccessPoints):
    a file system that does not exist is ``FileSystemNotFound`` (moto makes an access point on
    any id), and a ``ClientToken`` that made an access point already is ``AccessPointAlreadyExists``
    (moto makes a second one)."""
    from moto.efs.exceptions import EFSError, FileSystemNotFound
    from moto.efs.models import EFSBackend

    class AccessPointAlreadyExists(EFSError):
        code = 409

        def __init__(self, token: str):
            super().__init__("AccessPointAlreadyExists", f"An access point with the client token {token} already exists.")

    create, describe = EFSBackend.create_access_point, EFSBackend.describe_access_points

    def patched_create(self, client_token, tags, file_system_id, posix_user, root_directory):
        if _ACTIVE is not None:
            if file_system_id not in self.file_systems_by_id:
                raise FileSystemNotFound(file_system_id)
            if any(ap.client_token == client_token for ap in self.access_points.values()):
                raise AccessPointAlreadyExists(client_token)
        return create(self, client_token, tags, file_system_id, posix_user, root_directory)

    def patched_describe(self, access_point_id, file_system_id):
        if _ACTIVE is not None and file_system_id and file_system_id not in self.file_systems_by_id:
            raise FileSystemNotFound(file_system_id)
        return describe(self, access_point_id, file_system_id)

    EFSBackend.create_access_point, EFSBackend.describe_access_points = patched_create, patched_describe


DYNAMODB_TARGET = "DynamoDB_20120810."  # the X-Amz-Target prefix of DynamoDB's API


def _form(environ: dict, body: bytes) -> dict[str, list[str]]:
    """A query-protocol request's form fields (EC2, STS, Auto Scaling); {} for a JSON protocol's
    (SSM, DynamoDB: X-Amz-Target names the action)."""
    return {} if environ.get("HTTP_X_AMZ_TARGET") else parse_qs(body.decode("utf-8", errors="replace"))


def _action(environ: dict, form: dict[str, list[str]]) -> str:
    """The API action of a request: JSON protocols name it in X-Amz-Target, query protocols in the
    form field Action (of the body, or of the query string)."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.rsplit(".", 1)[-1]
    return (form or parse_qs(environ.get("QUERY_STRING", ""))).get("Action", ["?"])[0]


def _control_app(emulator: Emulator, moto_app: Callable) -> Callable:
    """WSGI: the control paths under /_ec2hub/, everything else to moto (after a tick)."""

    def respond(start_response, status: str, body: Any):
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def aws_call(environ, start_response):
        """Count the call by action, then refuse it (outage), hold it, or pass it to moto."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = _form(environ, body)
        action = _action(environ, form)
        emulator.count_call(action)
        try:
            if emulator.in_outage:
                emulator._count("Refused")
                raise Dropped(f"{action} refused: outage")
            emulator._wait_if_held(action, body.decode("utf-8", errors="replace"))
        except Dropped:
            # No response at all: the client sees the connection closed, as with an unreachable
            # endpoint. werkzeug treats a ConnectionError from the app as a dropped connection.
            with contextlib.suppress(OSError):
                environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            raise
        emulator.record(action, environ, form)  # it reaches AWS (CloudTrail records no dropped call)
        if action == "SignalResource":
            return signal_resource(body, start_response)
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith(DYNAMODB_TARGET):
            with emulator._dynamodb_turn:
                return moto_app(environ, start_response)
        return moto_app(environ, start_response)

    def signal_resource(body: bytes, start_response):
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace")).items()}
        signal = {key: form.get(name, "") for key, name in (
            ("stack", "StackName"), ("logical_id", "LogicalResourceId"), ("unique_id", "UniqueId"), ("status", "Status"))}
        signal["time"] = time.time()
        with emulator._lock:
            emulator.signals.append(signal)
        data = signal_resource_answer(str(uuid.uuid4()))
        start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(data)))])
        return [data]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        emulator.tick()
        if not path.startswith(CONTROL_PREFIX):
            return aws_call(environ, start_response)
        method = environ["REQUEST_METHOD"]
        try:
            if method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            if path == CONTROL_PREFIX + "state" and method == "GET":
                return respond(start_response, "200 OK", emulator.state())
            if path == CONTROL_PREFIX + "faults" and method == "POST":
                emulator.set_timing(pending_s=body.get("pending_s"), stopping_s=body.get("stopping_s"),
                                    shutting_down_s=body.get("shutting_down_s"),
                                    start_lag_s=body.get("start_lag_s"),
                                    visibility_lag_s=body.get("visibility_lag_s"))
                if body.get("clear_capacity"):
                    emulator.clear_capacity_faults()
                for fault in body.get("capacity", []):
                    emulator.add_capacity_fault(fault["az"], fault["instance_type"])
                if "throttle" in body:
                    throttle = body["throttle"]
                    emulator.set_throttle(None) if throttle is None else emulator.set_throttle(
                        int(throttle.get("burst", 5)), float(throttle.get("per_second", 2.0)))
                return respond(start_response, "200 OK", emulator.state())
            if path == CONTROL_PREFIX + "outage" and method == "POST":
                emulator.outage(float(body["seconds"]))
                return respond(start_response, "200 OK", emulator.state())
            if path == CONTROL_PREFIX + "holds" and method == "POST":
                return respond(start_response, "200 OK",
                               emulator.hold(str(body["action"]), str(body.get("contains", ""))).model())
            if path == CONTROL_PREFIX + "release" and method == "POST":
                return respond(start_response, "200 OK",
                               emulator.release(int(body["id"]), drop=bool(body.get("drop"))).model())
            if path == CONTROL_PREFIX + "terminate" and method == "POST":
                emulator.terminate(body["instance_id"], spot=bool(body.get("spot")))
                return respond(start_response, "200 OK", {"instance_id": body["instance_id"]})
            if path == CONTROL_PREFIX + "signals" and method == "GET":
                with emulator._lock:
                    return respond(start_response, "200 OK", {"signals": list(emulator.signals)})
            if path == CONTROL_PREFIX + "trail" and method == "GET":
                with emulator._lock:
                    return respond(start_response, "200 OK", {"trail": list(emulator.trail)})
            if path == CONTROL_PREFIX + "events" and method == "GET":
                query = parse_qs(environ.get("QUERY_STRING", ""))
                after = int(query.get("after", ["0"])[0])
                timeout = min(float(query.get("timeout", ["0"])[0]), 60.0)
                events = emulator.events(after, timeout)
                return respond(start_response, "200 OK", {"events": events,
                                                          "last": events[-1]["seq"] if events else after})
            return respond(start_response, "404 Not Found", {"error": f"no such control path: {method} {path}"})
        except (KeyError, ValueError, TypeError) as error:
            return respond(start_response, "400 Bad Request", {"error": str(error)})

    return app


def start_emulator(
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    pending_s: float = 0.0,
    stopping_s: float = 0.0,
    shutting_down_s: float = 0.0,
    default_account: str | None = None,
) -> Emulator:
    """Start moto in server mode with the ec2hub behaviours on ``host:port`` (0: a free port).

    ``default_account``: the account of every key moto did not issue (module docstring); it
    needs ``MOTO_ACCOUNT_ID`` unset, which would put every call in that one account."""
    global _ACTIVE
    if default_account is not None and "MOTO_ACCOUNT_ID" in os.environ:
        raise RuntimeError("MOTO_ACCOUNT_ID puts every call in one account: unset it to give a default_account")
    if _ACTIVE is not None:
        raise RuntimeError(f"an emulator already runs in this process at {_ACTIVE.endpoint_url}")
    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    _install_patches()
    emulator = Emulator(host=host, port=port, pending_s=pending_s, stopping_s=stopping_s,
                        shutting_down_s=shutting_down_s)
    _use_default_account(default_account)

    class _QuietHandler(MotoRequestHandler):
        def log_request(self, *args, **kwargs) -> None:  # one line per AWS call is noise here
            pass

    class _Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = _control_app(emulator, DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True,
                                       request_handler=_QuietHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    server = _Server(ip_address=host, port=port, verbose=False)
    server.start()
    emulator._server = server
    emulator.port = server.get_host_and_port()[1]
    emulator._ticker = threading.Thread(target=emulator._tick_forever, daemon=True, name="ec2hub-emulator-tick")
    emulator._ticker.start()
    emulator._dispatcher = threading.Thread(target=emulator._dispatch_forever, daemon=True,
                                            name="ec2hub-emulator-listeners")
    emulator._dispatcher.start()
    _ACTIVE = emulator
    return emulator


class EmulatorClient:
    """The HTTP control API of an emulator running in another process."""

    def __init__(self, endpoint_url: str):
        self.endpoint_url = endpoint_url.rstrip("/")

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.endpoint_url + CONTROL_PREFIX + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # loopback only
            return json.loads(response.read())

    def state(self) -> dict:
        return self._request("GET", "state")

    def faults(self, **body) -> dict:
        return self._request("POST", "faults", body)

    def terminate(self, instance_id: str, *, spot: bool = False) -> dict:
        return self._request("POST", "terminate", {"instance_id": instance_id, "spot": spot})

    def events(self, after: int = 0, timeout: float = 0.0) -> dict:
        return self._request("GET", f"events?after={after}&timeout={timeout}", timeout=timeout + 10)

    def signals(self) -> list[dict]:
        """The SignalResource calls the emulator received, in order."""
        return self._request("GET", "signals")["signals"]

    def trail(self) -> list[dict]:
        """The calls that may change something, in order, with who made them (:meth:`Emulator.record`)."""
        return self._request("GET", "trail")["trail"]

    def outage(self, seconds: float) -> dict:
        return self._request("POST", "outage", {"seconds": seconds})

    def hold(self, action: str, contains: str = "") -> dict:
        return self._request("POST", "holds", {"action": action, "contains": contains})

    def release(self, hold_id: int, *, drop: bool = False) -> dict:
        return self._request("POST", "release", {"id": hold_id, "drop": drop})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="moto with ec2hub's EC2 behaviours")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--pending-s", type=float, default=5.0)
    parser.add_argument("--throttle", action="store_true", help="EC2's RunInstances bucket (5 burst, 2/s)")
    args = parser.parse_args(argv)
    emulator = start_emulator(args.port, host=args.host, pending_s=args.pending_s)
    if args.throttle:
        emulator.set_throttle(5, 2.0)
    print(json.dumps({"endpoint_url": emulator.endpoint_url}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        emulator.stop()


if __name__ == "__main__":
    main()
