"""The hub's proxy keeps idle client connections open past configurable-http-proxy's 5 s default.

A real configurable-http-proxy on 127.0.0.1, started with the command line the hub config gives it
(``proxy_args``), and a client that sends one request on a keep-alive connection, then waits on the
socket: a close by the proxy makes the socket readable with no data.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import subprocess
import time

import pytest
from ec2spawner.hubconfig import PROXY_KEEP_ALIVE_TIMEOUT_S, proxy_args
from spawner_testing import REPO
from waiting import free_port

pytestmark = pytest.mark.slow

CHP = str(REPO / "node_modules/.bin/configurable-http-proxy")
CHP_DEFAULT_KEEP_ALIVE_S = 5


@pytest.fixture
def start_proxy(tmp_path):
    procs = []

    def start(args):
        port, api_port = free_port(), free_port()
        log = open(tmp_path / f"chp-{port}.log", "w")  # noqa: SIM115 (the process owns it)
        proc = subprocess.Popen(
            [*args, "--ip", "127.0.0.1", "--port", str(port),
             "--api-ip", "127.0.0.1", "--api-port", str(api_port)],
            env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": "keepalive-test-token"},
            stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, log))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                assert proc.poll() is None, (tmp_path / f"chp-{port}.log").read_text()
                time.sleep(0.1)
        raise AssertionError("configurable-http-proxy did not listen")

    yield start
    for proc, log in procs:
        proc.terminate()
        proc.wait(10)
        log.close()


def request(conn: http.client.HTTPConnection) -> int:
    """One GET on the connection, read to the end (the proxy answers 404: it has no routes)."""
    conn.request("GET", "/nothing", headers={"Host": "hub"})
    response = conn.getresponse()
    response.read()
    assert response.getheader("Connection") == "keep-alive"
    return response.status


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the peer closes the idle connection within ``seconds``."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return bool(readable) and sock.recv(1) == b""


def test_idle_connection_stays_open_past_the_proxy_default(start_proxy):
    assert PROXY_KEEP_ALIVE_TIMEOUT_S > CHP_DEFAULT_KEEP_ALIVE_S
    port = start_proxy(proxy_args(CHP))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        assert request(conn) == 404
        sock = conn.sock
        local = sock.getsockname()
        # Idle for longer than configurable-http-proxy's default keep-alive: still open ...
        assert not closed_within(sock, CHP_DEFAULT_KEEP_ALIVE_S + 1.5)
        # ... and it carries the next request (the same connection: http.client did not reopen).
        assert request(conn) == 404
        assert conn.sock is sock and sock.getsockname() == local
    finally:
        conn.close()


def test_the_check_sees_a_proxy_close_an_idle_connection(start_proxy):
    """The same client against a proxy with a 1 s keep-alive: the close is seen, promptly."""
    port = start_proxy([CHP, "--keep-alive-timeout=1000"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        request(conn)
        started = time.monotonic()
        assert closed_within(conn.sock, 10)
        assert time.monotonic() - started >= 0.9
    finally:
        conn.close()
