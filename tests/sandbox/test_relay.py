"""The relay that carries every sandbox connection between namespaces (here: loopback to loopback)."""

import socket
import threading

import pytest
from waiting import wait_until

from sandbox.netns import Relay


@pytest.fixture
def closing_server():
    """Answers one message per connection, then closes it (as an HTTP/1.0 server does)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_relay_carries_both_directions(closing_server):
    with (
        Relay(listen=("127.0.0.1", 0), connect=("127.0.0.1", closing_server)) as relay,
        socket.create_connection(("127.0.0.1", relay.port), timeout=5) as client,
    ):
        client.sendall(b"ping")
        assert client.recv(1024) == b"pong"


def test_server_close_ends_the_client_connection_so_a_reused_one_fails_fast(closing_server):
    """A keep-alive client that writes its next request after the server closed must find the
    connection gone, not half-open with nobody behind it: botocore, reusing such a connection,
    waited 60 s for an answer. Here the relay has closed its end, so the peer resets the second
    write; a relay that kept the client's half open would swallow both writes."""
    with (
        Relay(listen=("127.0.0.1", 0), connect=("127.0.0.1", closing_server)) as relay,
        socket.create_connection(("127.0.0.1", relay.port), timeout=3) as client,
    ):
        client.sendall(b"ping")
        assert client.recv(1024) == b"pong"
        assert client.recv(1024) == b"", "the server's close reaches the client"
        # The first write after the close is accepted by the kernel either way; the peer's reset
        # then makes a later one fail. A relay that kept the half open never does: bounded wait.
        def write_fails() -> bool:
            try:
                client.sendall(b"next request")
            except (BrokenPipeError, ConnectionResetError):
                return True
            return False

        wait_until(write_fails, 5, "a write after the close to fail with the peer's reset")


def test_root_namespace_listener_must_be_loopback():
    with pytest.raises(ValueError, match="loopback only"):
        Relay(listen=("0.0.0.0", 0), connect=("127.0.0.1", 1))
