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
* terminating an instance behind the hub's back, and spot interruption (terminated with
  StateReason ``Server.SpotInstanceTermination``);
* state-change events (``running``, ``stopped``, ``terminated``) to in-process listeners and over
  HTTP, for the sandbox's simulated data plane, and a ``rebooting`` event on RebootInstances of a
  running instance (EC2 keeps it ``running``; the data plane reboots its host through systemd).

Control in-process through the :class:`Emulator` methods, or over HTTP on the same port
(``EmulatorClient`` speaks it)::

    GET  /_ec2hub/state                       current faults and counters
    POST /_ec2hub/faults    {"pending_s": 5, "stopping_s": 0, "shutting_down_s": 0,
                             "capacity": [{"az": "us-east-1a", "instance_type": "g5.xlarge"}],
                             "clear_capacity": true,
                             "throttle": {"burst": 5, "per_second": 2} | null}
    POST /_ec2hub/terminate {"instance_id": "i-...", "spot": false}
    GET  /_ec2hub/events?after=<seq>&timeout=<s>   long poll: events with seq > after

Only one emulator is active per process at a time (the moto patches are process-wide).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_ec2hub/"
SPOT_REASON = ("Server.SpotInstanceTermination: Spot instance termination", "Server.SpotInstanceTermination")
_STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
_MAX_EVENTS = 100_000


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
    counters: dict[str, int] = field(default_factory=dict)
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

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- faults ---------------------------------------------------------------------------------

    def set_timing(self, *, pending_s: float | None = None, stopping_s: float | None = None,
                   shutting_down_s: float | None = None) -> None:
        with self._lock:
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
        with self._lock:
            tracked = self._tracked.get(instance_id)
            if tracked is None:
                raise KeyError(f"no such instance: {instance_id}")
            tracked.reason = SPOT_REASON if spot else None
            tracked.instance.terminate()  # patched: honours shutting_down_s, applies the reason
            if spot:
                self._set_reason(tracked, SPOT_REASON)

    def state(self) -> dict:
        with self._lock:
            return {
                "endpoint_url": self.endpoint_url,
                "pending_s": self.pending_s,
                "stopping_s": self.stopping_s,
                "shutting_down_s": self.shutting_down_s,
                "capacity": [{"az": az, "instance_type": t} for az, t in sorted(self.capacity_faults)],
                "throttle": None if self.throttle is None else
                {"burst": self.throttle.burst, "per_second": self.throttle.per_second},
                "counters": dict(self.counters),
                "instances": {iid: t.instance._state.name for iid, t in self._tracked.items()},
            }

    # -- events ---------------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``listener(event)`` on every state change; returns a function that unsubscribes.

        Events: ``{"seq", "time", "instance_id", "state", "private_ip", "subnet_id",
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
            if delay > 0:
                self._set_state(instance, transitional)
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
            for tracked in self._tracked.values():
                if tracked.due is not None and tracked.due <= now:
                    self._set_state(tracked.instance, tracked.target)
                    if tracked.reason:
                        self._set_reason(tracked, tracked.reason)
                        tracked.reason = None
                    final, tracked.due, tracked.target = tracked.target, None, None
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

    def after_run_instances(self, kwargs: dict, reservation: Any) -> None:
        token = kwargs.get("client_token")
        with self._lock:
            if token:
                self._tokens[token] = reservation
            for instance in reservation.instances:
                self._enter(instance, "pending", "running", self.pending_s)

    def stop(self) -> None:
        """Stop the server and the ticker; the moto patches stay installed but inactive."""
        global _ACTIVE
        self._stopping.set()
        self._dispatch.put(None)
        if self._server is not None:
            self._server.stop()
        if _ACTIVE is self:
            _ACTIVE = None


_ACTIVE: Emulator | None = None
_PATCHED = False


def _install_patches() -> None:
    """Wrap moto's instance model once per process; the wrappers act only while an emulator runs."""
    global _PATCHED
    if _PATCHED:
        return
    from moto.ec2.models.instances import Instance, InstanceBackend

    run_instances = InstanceBackend.run_instances
    start, stop, terminate, reboot = Instance.start, Instance.stop, Instance.terminate, Instance.reboot

    def patched_run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        emulator = _ACTIVE
        if emulator is None:
            return run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
        replay = emulator.before_run_instances(self, kwargs)
        if replay is not None:
            return replay
        reservation = run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
        emulator.after_run_instances(kwargs, reservation)
        return reservation

    def patched_start(self):
        previous = start(self)
        if _ACTIVE is not None:
            _ACTIVE._enter(self, "pending", "running", _ACTIVE.pending_s)
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

    InstanceBackend.run_instances = patched_run_instances
    Instance.start, Instance.stop, Instance.terminate = patched_start, patched_stop, patched_terminate
    Instance.reboot = patched_reboot
    _PATCHED = True


def _control_app(emulator: Emulator, moto_app: Callable) -> Callable:
    """WSGI: the control paths under /_ec2hub/, everything else to moto (after a tick)."""

    def respond(start_response, status: str, body: Any):
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        emulator.tick()
        if not path.startswith(CONTROL_PREFIX):
            return moto_app(environ, start_response)
        method = environ["REQUEST_METHOD"]
        try:
            if method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            if path == CONTROL_PREFIX + "state" and method == "GET":
                return respond(start_response, "200 OK", emulator.state())
            if path == CONTROL_PREFIX + "faults" and method == "POST":
                emulator.set_timing(pending_s=body.get("pending_s"), stopping_s=body.get("stopping_s"),
                                    shutting_down_s=body.get("shutting_down_s"))
                if body.get("clear_capacity"):
                    emulator.clear_capacity_faults()
                for fault in body.get("capacity", []):
                    emulator.add_capacity_fault(fault["az"], fault["instance_type"])
                if "throttle" in body:
                    throttle = body["throttle"]
                    emulator.set_throttle(None) if throttle is None else emulator.set_throttle(
                        int(throttle.get("burst", 5)), float(throttle.get("per_second", 2.0)))
                return respond(start_response, "200 OK", emulator.state())
            if path == CONTROL_PREFIX + "terminate" and method == "POST":
                emulator.terminate(body["instance_id"], spot=bool(body.get("spot")))
                return respond(start_response, "200 OK", {"instance_id": body["instance_id"]})
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
) -> Emulator:
    """Start moto in server mode with the ec2hub behaviours on ``host:port`` (0: a free port)."""
    global _ACTIVE
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
