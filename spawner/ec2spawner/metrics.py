"""The spawner's own Prometheus metrics, served with JupyterHub's at ``/hub/metrics``.

JupyterHub 6 answers ``/hub/metrics`` with ``prometheus_client.generate_latest(REGISTRY)``
(handlers/metrics.py), so every metric made here, in the default registry, is scraped with the
hub's own. Names start with ``ec2hub_``. Labels take only bounded values: a class slug (from the
catalog), a phase, a reason (a ``SpawnException`` reason or an EC2 error code), an instance state,
a sweep action; never a user name, a server name or an instance id, so the number of series does
not grow with the users. docs/ARCHITECTURE.md §16 lists every metric and where it is updated.

Besides metrics, two log lines are a contract: infra's CloudWatch metric filters count them
(:data:`SPAWN_FAILED_MARK`, :data:`ORPHAN_MARK`), so their wording lives here, once.

Counts are per process, which is per hub: the watcher's gauges add up the hubs of the process
(one in a real hub; several only in tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections import Counter as Tally
from collections.abc import Iterable, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from . import health
from .aws import InstanceView
from .payloads import TAG_CLASS

# The start of the hub log lines the stack's metric filters count (infra/observability.py).
SPAWN_FAILED_MARK = "ec2hub spawn failed:"
ORPHAN_MARK = "ec2hub sweeper: terminating orphan"

# EC2 takes seconds to accept a launch and 30-90 s to boot; start_timeout is 600 s by default.
_SPAWN_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, float("inf"))

SPAWN_DURATION = Histogram(
    "ec2hub_spawn_duration_seconds",
    "Seconds each phase of a successful start() took, by class: launch (the request until EC2 "
    "accepted a launch, resume or adoption, capacity fallbacks included), boot (from then until "
    "EC2 reports the instance running), server (from then until the server answered: its boot, "
    "user data and start; with wait_for_server).",
    ["instance_class", "phase"],
    buckets=_SPAWN_BUCKETS,
)
SPAWN_FAILURES = Counter(
    "ec2hub_spawn_failures",
    "Failed, timed-out or cancelled starts, by class and reason (the SpawnException's reason; "
    "'cancelled' for a timeout, a cancelled spawn or a hub shutdown; 'error' otherwise).",
    ["instance_class", "reason"],
)
CAPACITY_FALLBACKS = Counter(
    "ec2hub_capacity_fallbacks",
    "RunInstances refused for capacity, after which the next AZ or instance type was tried, by "
    "class and EC2 error code.",
    ["instance_class", "reason"],
)
INSTANCES = Gauge(
    "ec2hub_instances",
    "This hub's notebook instances by class and EC2 state, as the shared watcher last listed them.",
    ["instance_class", "state"],
)
SPEND_RATE = Gauge(
    "ec2hub_spend_rate_usd_per_hour",
    "Running instances times the class's hourly_cost_usd from the catalog, by class.",
    ["instance_class"],
)
SWEEPS = Counter("ec2hub_sweeps", "Orphan sweeps completed.")
SWEEP_ACTIONS = Counter(
    "ec2hub_sweep_actions",
    "What sweeps did: terminated (an instance no server owns), terminate_failed, kept (no owner "
    "but younger than orphan_grace, or kept stopped for its server), secret_deleted.",
    ["action"],
)
LEASE_HELD = Gauge(
    "ec2hub_lease_held",
    "1 while this hub process holds the hub lease and may change EC2, else 0 (also 0 with no "
    "lease table configured, where the hub acts without a lease).",
)



class _HealthProbes:
    """``ec2hub_health_events_total{event}``: the health prober's process-wide counts
    (``health.COUNTERS``), read at each scrape."""

    def collect(self):
        family = CounterMetricFamily(
            "ec2hub_health_events",
            "Health probes (attempts, failures, hub_side: failed on the hub's side) and their "
            "verdicts (declared_dead, outage_holds), see ec2spawner.health.",
            labels=["event"],
        )
        for event, count in dataclasses.asdict(health.COUNTERS).items():
            family.add_metric([event], count)
        yield family


REGISTRY.register(_HealthProbes())

_UNKNOWN_CLASS = "unknown"

# (hub id, site) -> (class, state) -> count, and hub id -> class -> USD/hour; the gauges add the
# hubs and their sites (the hub's own account and each target's, one watcher each) up.
_counts: dict[tuple[str, str], Tally] = {}
_prices: dict[str, dict[str, float]] = {}
_seen_instances: set[tuple[str, str]] = set()
_seen_spend: set[str] = set()


def instance_counts(snapshot: Mapping[str, InstanceView]) -> Tally:
    """(class slug, state) -> number of instances in a watcher snapshot."""
    return Tally((view.tags.get(TAG_CLASS) or _UNKNOWN_CLASS, view.state) for view in snapshot.values())


def spend_rates(counts: Mapping[tuple[str, str], int], prices: Mapping[str, float]) -> dict[str, float]:
    """Class slug -> USD per hour of its running instances (a class with no price costs 0)."""
    rates: dict[str, float] = {}
    for (slug, state), n in counts.items():
        if state == "running":
            rates[slug] = rates.get(slug, 0.0) + n * prices.get(slug, 0.0)
    return rates


def know_classes(hub_id: str, classes: Iterable[Mapping]) -> None:
    """Remember each class's hourly price (``hourly_cost_usd``; none: 0) for the spend rate."""
    _prices[hub_id] = {c["slug"]: float(c.get("hourly_cost_usd") or 0.0) for c in classes}


def observe_instances(hub_id: str, snapshot: Mapping[str, InstanceView], *, site: str = "") -> None:
    """Set the instance and spend gauges from one watcher snapshot (once per describe cycle);
    ``site`` is the watcher's account and region (``Aws.key``)."""
    _counts[(hub_id, site)] = instance_counts(snapshot)
    _publish()


def forget_hub(hub_id: str, site: str = "") -> None:
    """A stopped watcher's instances no longer count."""
    _counts.pop((hub_id, site), None)
    _publish()


def _publish() -> None:
    total: Tally = Tally()
    rates: dict[str, float] = {}
    for (hub_id, _site), counts in _counts.items():
        total.update(counts)
        for slug, rate in spend_rates(counts, _prices.get(hub_id, {})).items():
            rates[slug] = rates.get(slug, 0.0) + rate
    # A series once seen is set to 0, not dropped: "no running GPU instances" is a value.
    _seen_instances.update(total)
    for labels in _seen_instances:
        INSTANCES.labels(*labels).set(total.get(labels, 0))
    _seen_spend.update(rates)
    for slug in _seen_spend:
        SPEND_RATE.labels(slug).set(rates.get(slug, 0.0))


class SpawnClock:
    """Times the phases of one start(): each :meth:`phase` observes the time since the last."""

    def __init__(self, instance_class: str):
        self.instance_class = instance_class
        self._last = time.monotonic()

    def phase(self, name: str) -> None:
        now = time.monotonic()
        SPAWN_DURATION.labels(self.instance_class, name).observe(now - self._last)
        self._last = now


def spawn_failed(log, server: str, instance_class: str, error: BaseException) -> None:
    """Count a failed start and log the line the stack's spawn-failure alarm counts."""
    if isinstance(error, asyncio.CancelledError | asyncio.TimeoutError):
        reason = "cancelled"
    else:
        reason = getattr(error, "reason", None) or "error"
    SPAWN_FAILURES.labels(instance_class, reason).inc()
    log.warning("%s %s: class %s, reason %s", SPAWN_FAILED_MARK, server, instance_class, reason)


def watch_lease(lease) -> None:
    """Make ``ec2hub_lease_held`` read ``lease.holds()`` at each scrape (holding ends with time,
    not only at a renewal: see ec2spawner.lease, "fencing by time")."""
    ref = weakref.ref(lease)
    LEASE_HELD.set_function(lambda: float(bool(ref() and ref().holds())))
