"""The spawner's Prometheus metrics (ec2spawner.metrics): the pure counts by equality, and the
failure counter and its log line from a real start against the emulator. What /hub/metrics serves
after a spawn through a real hub is in test_spawner_hub.py."""

from __future__ import annotations

import logging

import pytest
from ec2spawner import health, metrics
from ec2spawner.aws import InstanceView
from jupyterhub.spawner import SpawnException
from prometheus_client import REGISTRY
from spawner_testing import AZS


def view(iid, state, slug=None):
    return InstanceView(instance_id=iid, state=state, tags={"ec2hub:class": slug} if slug else {})


def test_instance_counts_and_spend_rates():
    snapshot = {v.instance_id: v for v in [
        view("i-1", "running", "small"), view("i-2", "running", "small"), view("i-3", "pending", "small"),
        view("i-4", "running", "gpu"), view("i-5", "stopped", "gpu"), view("i-6", "running"),
    ]}
    counts = metrics.instance_counts(snapshot)
    assert counts == {("small", "running"): 2, ("small", "pending"): 1, ("gpu", "running"): 1,
                      ("gpu", "stopped"): 1, ("unknown", "running"): 1}
    assert metrics.spend_rates(counts, {"small": 0.0416, "gpu": 1.006}) == {
        "small": pytest.approx(0.0832), "gpu": pytest.approx(1.006), "unknown": 0.0}


def test_gauges_keep_a_series_at_zero_once_its_instances_are_gone():
    hub = "metrics-gauge-test"
    metrics.know_classes(hub, [{"slug": "gauge-test", "hourly_cost_usd": 2.5}])
    metrics.observe_instances(hub, {"i-1": view("i-1", "running", "gauge-test")})
    running = {"instance_class": "gauge-test", "state": "running"}
    assert REGISTRY.get_sample_value("ec2hub_instances", running) == 1
    assert REGISTRY.get_sample_value("ec2hub_spend_rate_usd_per_hour", {"instance_class": "gauge-test"}) == 2.5
    metrics.forget_hub(hub)
    assert REGISTRY.get_sample_value("ec2hub_instances", running) == 0
    assert REGISTRY.get_sample_value("ec2hub_spend_rate_usd_per_hour", {"instance_class": "gauge-test"}) == 0


def test_the_gauges_add_up_the_watchers_of_every_account():
    hub = "metrics-sites-test"
    metrics.know_classes(hub, [{"slug": "sites-test", "hourly_cost_usd": 1.0}])
    running = {"instance_class": "sites-test", "state": "running"}
    metrics.observe_instances(hub, {"i-1": view("i-1", "running", "sites-test")}, site="us-east-1")
    metrics.observe_instances(hub, {"i-2": view("i-2", "running", "sites-test"),
                                    "i-3": view("i-3", "running", "sites-test")}, site="arn:b@eu-central-1")
    assert REGISTRY.get_sample_value("ec2hub_instances", running) == 3  # one watcher does not hide another
    assert REGISTRY.get_sample_value("ec2hub_spend_rate_usd_per_hour", {"instance_class": "sites-test"}) == 3.0
    metrics.forget_hub(hub, "arn:b@eu-central-1")
    assert REGISTRY.get_sample_value("ec2hub_instances", running) == 1
    metrics.forget_hub(hub, "us-east-1")


async def test_a_failed_start_is_counted_by_reason_and_logged_for_the_alarm(new_spawner, emu, caplog):
    for az in AZS:
        for itype in ("t3.medium", "t3a.medium"):
            emu.add_capacity_fault(az, itype)
    failures = {"instance_class": "small", "reason": "capacity"}
    fallbacks = {"instance_class": "small", "reason": "InsufficientInstanceCapacity"}
    before = [REGISTRY.get_sample_value(n, labels) or 0 for n, labels in [
        ("ec2hub_spawn_failures_total", failures), ("ec2hub_capacity_fallbacks_total", fallbacks)]]
    spawner = new_spawner("carol")
    with caplog.at_level(logging.WARNING), pytest.raises(SpawnException):
        await spawner.start()
    assert REGISTRY.get_sample_value("ec2hub_spawn_failures_total", failures) == before[0] + 1
    # Every AZ for each of the class's two types.
    assert REGISTRY.get_sample_value("ec2hub_capacity_fallbacks_total", fallbacks) == before[1] + 6
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith(metrics.SPAWN_FAILED_MARK)]
    assert line == f"{metrics.SPAWN_FAILED_MARK} {spawner._log_name}: class small, reason capacity"


def test_health_probe_counts_are_served_at_each_scrape():
    before = REGISTRY.get_sample_value("ec2hub_health_events_total", {"event": "declared_dead"})
    health.COUNTERS.declared_dead += 1
    try:
        assert REGISTRY.get_sample_value("ec2hub_health_events_total", {"event": "declared_dead"}) == before + 1
    finally:
        health.COUNTERS.declared_dead -= 1
