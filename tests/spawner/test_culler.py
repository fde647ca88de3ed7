"""The culler's and the activity agent's decisions, as pure functions (the real-hub tests are in
test_culling_hub.py; the instance's backstop boots in tests/bootstrap/test_backstop.py)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest
from ec2spawner.culler import cull_reason
from spawner_testing import REPO

sys.path.insert(0, str(REPO / "bootstrap"))
from ec2hub_bootstrap.activity import (
    Limits,
    ServerView,
    activity_body,
    backstop_due,
    busy_reasons,
    cpu_times,
    cpus_busy,
    local_server_url,
)

T0 = datetime(2026, 12, 1, 12, 0, 0)


@pytest.mark.parametrize(("started", "last", "idle", "age", "expected"), [
    (0, 50, 60, 0, None),
    (0, 90, 60, 0, None),
    (0, None, 60, 0, "idle 100 s, past its idle_timeout of 60 s"),  # no activity: counts from the start
    (0, 30, 60, 0, "idle 70 s, past its idle_timeout of 60 s"),
    (0, 90, 60, 95, "ran 100 s, past its max_age of 95 s"),
    (0, 0, 0, 0, None),  # no limits
])
def test_cull_reason(started, last, idle, age, expected):
    now = T0 + timedelta(seconds=100)
    at = (lambda s: None if s is None else T0 + timedelta(seconds=s))
    assert cull_reason(now=now, started=at(started), last_activity=at(last), idle_timeout=idle, max_age=age) == expected


def test_limits_from_the_servers_env():
    env = {"EC2HUB_IDLE_TIMEOUT_S": "600", "EC2HUB_MAX_AGE_S": "0", "EC2HUB_ACTIVITY_INTERVAL_S": "30",
           "EC2HUB_BACKSTOP_GRACE_S": "1800", "EC2HUB_BUSY_CPUS": "bad"}
    assert Limits.from_env(env) == Limits(idle_timeout=600, max_age=0, interval=30, backstop_grace=1800,
                                          busy_cpus=0.5, busy_gpu_percent=10.0)


def test_cpu_times_and_busy_cpus():
    before = cpu_times("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    after = cpu_times("cpu  250 0 150 900 100 0 0 0 0 0\n")
    assert (before, after) == ((200, 1000), (400, 1400))
    assert cpus_busy(before, after, 4) == 2.0


def test_busy_reasons():
    limits = Limits()
    previous = ServerView(kernels=[], terminals=[{"name": "1", "last_activity": "a"}], last_activity="x")
    view = ServerView(kernels=[{"execution_state": "busy"}, {"execution_state": "idle"}],
                      terminals=[{"name": "1", "last_activity": "b"}], last_activity="y")
    assert busy_reasons(view, previous, cpus=0.6, gpu=50, limits=limits) == [
        "1 kernel(s) busy", "1 terminal(s) in use", "server activity", "CPU 0.60 busy", "GPU 50 %"]
    quiet = ServerView(kernels=[{"execution_state": "idle"}], terminals=previous.terminals, last_activity="x")
    assert busy_reasons(quiet, previous, cpus=0.1, gpu=None, limits=limits) == []


@pytest.mark.parametrize(("now", "busy", "contact", "expected"), [
    (1000, 0, 900, None),  # the hub answered recently
    (1000, 500, 0, None),  # silent hub, but busy recently
    (1000, 0, 0, "idle for 1000 s (idle_timeout 600 s) and no answer from the hub for 1000 s"),
    (2500, 2400, 0, "running for 2500 s (max_age 2000 s) and no answer from the hub for 2500 s"),
])
def test_backstop_due(now, busy, contact, expected):
    limits = Limits(idle_timeout=600, max_age=2000, backstop_grace=300)
    assert backstop_due(now=now, started=0, last_busy=busy, last_contact=contact, limits=limits) == expected
    assert backstop_due(now=now, started=0, last_busy=busy, last_contact=contact,
                        limits=Limits(idle_timeout=600, max_age=2000, backstop_grace=0)) is None


def test_activity_body_and_local_url():
    when = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    assert activity_body("", when) == {"servers": {"": {"last_activity": "2026-12-01T12:00:00Z"}},
                                       "last_activity": "2026-12-01T12:00:00Z"}
    assert local_server_url("http://0.0.0.0:8888/user/alice/") == "http://127.0.0.1:8888/user/alice/"
    assert local_server_url("http://127.0.1.5:4000/user/a/gpu") == "http://127.0.1.5:4000/user/a/gpu/"


def test_server_limits_are_the_classes_else_the_hubs(new_spawner, platform):
    classes = [dict(platform.classes[0], idle_timeout=600, max_age=7200), platform.classes[1]]
    spawner = new_spawner(classes=classes, idle_timeout=1800, max_age=0)
    spawner.instance_class = "small"
    assert spawner.server_limits() == (600, 7200)
    spawner.instance_class = "gpu"  # sets neither: the hub-wide limits
    assert spawner.server_limits() == (1800, 0)
    env = spawner.get_env()
    assert {k: v for k, v in env.items() if k.startswith("EC2HUB_")} == {
        "EC2HUB_IDLE_TIMEOUT_S": "1800", "EC2HUB_MAX_AGE_S": "0", "EC2HUB_ACTIVITY_INTERVAL_S": "60",
        "EC2HUB_BACKSTOP_GRACE_S": "1800"}
