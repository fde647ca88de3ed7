"""The health prober: probes against real loopback sockets, its verdict rules, and poll() ending a
server that stopped answering (stop_mode=terminate) against the AWS emulator."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from types import SimpleNamespace

import pytest
from ec2spawner import health
from ec2spawner.health import Finding, HealthProber
from waiting import until


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_probe_finds_an_http_answer():
    async def answer(reader, writer):
        await reader.readline()
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await health.probe(f"http://127.0.0.1:{port}", "/user/a/api", 2) == (Finding.OK, "HTTP/1.1 403 Forbidden")


async def test_probe_finds_refused():
    port = closed_port()
    assert await health.probe(f"http://127.0.0.1:{port}", "/api", 2) == (Finding.REFUSED, f"connection to :{port} refused")


async def test_probe_finds_no_answer_from_a_listener_that_never_serves():
    # The kernel completes the handshake into the backlog, as for a SIGSTOPped server.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        found = await health.probe(f"http://127.0.0.1:{port}", "/api", 0.3)
    assert found == (Finding.NO_ANSWER, f"no answer on :{port} within 0.3 s")
    assert time.monotonic() - started < 2


async def test_probe_finds_a_connection_closed_without_an_answer():
    async def close(reader, writer):
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await health.probe(f"http://127.0.0.1:{port}", "/api", 2) == (
            Finding.NO_ANSWER, f"connection on :{port} closed without an answer")


async def test_probe_without_a_file_descriptor_is_the_hubs_failure():
    port = closed_port()
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Below the descriptors already open (allowed): every new one fails with EMFILE.
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, limits[1]))
    try:
        found = await health.probe(f"http://127.0.0.1:{port}", "/api", 2)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    assert found == (Finding.HUB_SIDE, "the hub could not connect (EMFILE)")


def prober(**kw) -> HealthProber:
    return HealthProber(**{"interval": 10.0, "timeout": 5.0, "window": 60.0, "failures": 3, **kw})


def fail(p: HealthProber, key: str, times: list[float], finding=Finding.REFUSED, detail="connection to :8888 refused"):
    p.watch(key, "http://127.0.0.1:8888", "/api")
    for t in times:
        p.record(p.targets[key], finding, detail, t)


def test_dead_only_after_enough_failures_over_the_window():
    p = prober()
    fail(p, "i-a", [0, 10, 20])
    assert p.verdict("i-a", now=59) is None  # three failures, but not for the window yet
    assert p.verdict("i-a", now=60) == "connection to :8888 refused; failing for 60 s (3 probes)"
    q = prober(window=10)
    fail(q, "i-a", [0, 30])
    assert q.verdict("i-a", now=100) is None  # the window passed, but only two probes failed


def test_one_answer_ends_the_streak():
    p = prober()
    fail(p, "i-a", [0, 10, 20])
    p.record(p.targets["i-a"], Finding.OK, "HTTP/1.1 200 OK", 30)
    fail(p, "i-a", [40, 50, 60])
    assert p.verdict("i-a", now=90) is None
    assert p.verdict("i-a", now=100) == "connection to :8888 refused; failing for 60 s (3 probes)"


def test_no_verdict_within_a_window_of_a_hub_side_failure():
    p = prober()
    fail(p, "i-a", [0, 10, 20, 30])
    fail(p, "i-b", [35], Finding.HUB_SIDE, "the hub could not connect (EMFILE)")
    assert p.verdict("i-a", now=90) is None
    assert p.verdict("i-a", now=95) == "connection to :8888 refused; failing for 95 s (4 probes)"


def test_most_servers_failing_at_once_is_the_hubs_problem():
    before = health.COUNTERS.outage_holds
    p = prober()
    fail(p, "i-a", [0, 10, 20])
    fail(p, "i-b", [1, 11, 21], Finding.NO_ANSWER, "no answer on :8888 within 5 s")
    p.watch("i-c", "http://127.0.0.1:8888", "/api")
    p.record(p.targets["i-c"], Finding.OK, "HTTP/1.1 200 OK", 22)
    assert p.in_outage()  # two of three
    assert p.verdict("i-a", now=70) is None
    assert health.COUNTERS.outage_holds == before + 1
    p.record(p.targets["i-b"], Finding.OK, "HTTP/1.1 200 OK", 31)
    assert not p.in_outage()
    assert p.verdict("i-a", now=70) == "connection to :8888 refused; failing for 70 s (3 probes)"


def test_unreachable_counts_only_while_another_server_is_reached():
    p = prober()
    fail(p, "i-a", [0, 10, 20, 30, 40, 50, 60], Finding.UNREACHABLE, "no connection to :8888 within 5 s")
    assert p.verdict("i-a", now=60) is None  # nothing else reached: our network, or that instance?
    p.watch("i-b", "http://127.0.0.1:8888", "/api")
    p.record(p.targets["i-b"], Finding.OK, "HTTP/1.1 200 OK", 58)
    assert p.verdict("i-a", now=60) == "no connection to :8888 within 5 s; failing for 60 s (7 probes)"


def test_forgotten_servers_are_no_longer_counted():
    p = prober()
    fail(p, "i-a", [0, 10, 20])
    fail(p, "i-b", [0, 10, 20])
    p.forget("i-b")
    assert not p.in_outage()
    assert p.verdict("i-b", now=100) is None
    assert p.verdict("i-a", now=100) is not None


def test_console_tail_keeps_only_the_bootstraps_lines():
    output = ("[    0.000000] Linux version 6.1\ncloud-init: running modules\n"
              "ec2hub-notebook: secret: read /ec2hub/h/servers/i-1\nJUPYTERHUB_API_TOKEN=abc\n"
              "  ec2hub-notebook: server: jupyterhub-singleuser exited (status 137)\n")
    assert health.console_tail(output) == ["ec2hub-notebook: secret: read /ec2hub/h/servers/i-1",
                                           "ec2hub-notebook: server: jupyterhub-singleuser exited (status 137)"]
    assert health.console_tail("\n".join(f"ec2hub-notebook: {i}" for i in range(20)), lines=2) == [
        "ec2hub-notebook: 18", "ec2hub-notebook: 19"]


def test_announcement_escapes_each_servers_note():
    spawners = [SimpleNamespace(name="", health_note="Ended: <no answer>"),
                SimpleNamespace(name="gpu", health_note=None),
                SimpleNamespace(name="big", health_note="Ended & gone")]
    user = SimpleNamespace(all_spawners=lambda: spawners)
    assert health.announcement(user) == "Ended: &lt;no answer&gt;<br>Server &#x27;big&#x27;: Ended &amp; gone"
    assert health.announcement(SimpleNamespace(all_spawners=lambda: spawners[1:2])) is None
    assert health.announcement(None) is None


@pytest.mark.parametrize("stop_mode, final", [("terminate", "terminated"), ("stop", "stopped")])
async def test_poll_ends_a_server_that_stopped_answering(new_spawner, ec2, hub_secrets, stop_mode, final):
    port = closed_port()
    spawner = new_spawner(health_check=True, health_interval=0.05, health_timeout=0.5, health_window=0.3,
                          health_failures=2, notebook_port=port, server_url_template="http://127.0.0.1:{port}",
                          stop_mode=stop_mode)
    await spawner.start()
    iid = spawner.instance_id
    dead = health.COUNTERS.declared_dead
    assert await until(spawner.poll, what="poll() to report the server ended") == 1
    assert await spawner.poll() == 1  # JupyterHub's User.stop polls once more
    assert health.COUNTERS.declared_dead == dead + 1
    assert hub_secrets() == []
    answer = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert answer["State"]["Name"] in ((final, "stopping") if final == "stopped" else (final, "shutting-down"))
    assert spawner.health_note.startswith("Your server stopped answering and was ended at ")
    assert f"connection to :{port} refused; failing for " in spawner.health_note
    spawner.clear_state()
    assert spawner.get_state()["health_note"] == spawner.health_note  # kept for the next visit
    assert (spawner.get_state().get("kept_instance_id") == iid) == (stop_mode == "stop")
