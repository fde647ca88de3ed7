"""A VPC peering connection between two sandbox VPCs (the two-account sandbox's path from a target
account's notebooks to the hub, docs/ARCHITECTURE.md §19): routed between the two ranges, only
the security groups' ports open, nothing of either VPC namespace itself reachable across it."""

from __future__ import annotations

import socket
import threading

import pytest

from sandbox.netns import (
    Peering,
    Vpc,
    add_netns,
    connect_in_netns,
    delete_netns,
    list_netns,
    listen_in_netns,
)

HUB_VPC, TARGET_VPC = "ec2hub-ptest-a", "ec2hub-ptest-b"
HUB_CIDR, TARGET_CIDR = "10.8.0.0/16", "10.18.0.0/16"
HUB_HOST, NOTEBOOK = "10.8.1.10", "10.18.1.10"
HUB_API, NOTEBOOK_PORT = 8081, 8888


class Listener:
    """A TCP server in a namespace that answers each connection with the address it came from."""

    def __init__(self, netns: str, port: int):
        self.sock = listen_in_netns(netns, "0.0.0.0", port)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(peer[0].encode())

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def answer(netns: str, address: str, port: int) -> str:
    """What the listener at ``address:port`` says (the caller's address as it saw it)."""
    with connect_in_netns(netns, address, port, timeout=10) as sock:
        sock.settimeout(10)
        return sock.recv(100).decode()


@pytest.fixture
def vpcs():
    """Two VPCs, a host in each (the hub host in A, a notebook in B), listeners on the ports the
    security groups open and on others; and on A's VPC namespace itself (its endpoint relays)."""
    made, listeners = [], []
    try:
        for name, gateway, host, address in ((HUB_VPC, "10.8.1.1/24", f"{HUB_VPC}-h", HUB_HOST),
                                             (TARGET_VPC, "10.18.1.1/24", f"{TARGET_VPC}-h", NOTEBOOK)):
            vpc = Vpc(name, gateways=[gateway], dhcp=False).create()
            made.append(vpc)
            add_netns(host)
            vpc.plug(host, address, 24, gateway.split("/")[0])
        listeners += [Listener(f"{HUB_VPC}-h", HUB_API), Listener(f"{HUB_VPC}-h", 5432),
                      Listener(f"{TARGET_VPC}-h", NOTEBOOK_PORT), Listener(f"{TARGET_VPC}-h", 9999),
                      Listener(HUB_VPC, 4566)]
        yield made
    finally:
        for listener in listeners:
            listener.close()
        for vpc in made:
            delete_netns(f"{vpc.name}-h")
            vpc.destroy()
        assert not [n for n in list_netns() if n.startswith("ec2hub-ptest-")]


def test_peering_routes_only_the_security_groups_ports(vpcs):
    hub_vpc, target_vpc = vpcs
    with Peering(hub_vpc, target_vpc, cidrs=(HUB_CIDR, TARGET_CIDR), ports=((HUB_API,), (NOTEBOOK_PORT,))):
        # The notebook registers with the hub API, and the hub's proxy reaches the notebook, each
        # seeing the other's own address (routed, no translation).
        assert answer(f"{TARGET_VPC}-h", HUB_HOST, HUB_API) == NOTEBOOK
        assert answer(f"{HUB_VPC}-h", NOTEBOOK, NOTEBOOK_PORT) == HUB_HOST
        # No other port either way, and nothing of A's VPC namespace (its relays, its DNS).
        for netns, address, port in ((f"{TARGET_VPC}-h", HUB_HOST, 5432), (f"{HUB_VPC}-h", NOTEBOOK, 9999),
                                     (f"{TARGET_VPC}-h", "10.8.1.1", 4566)):
            with pytest.raises(ConnectionRefusedError):
                answer(netns, address, port)
        # Inside A, the hub's own VPC is untouched: its host reaches its gateway's relay.
        assert answer(f"{HUB_VPC}-h", "10.8.1.1", 4566) == HUB_HOST


def test_without_the_peering_the_vpcs_do_not_reach_each_other(vpcs):
    hub_vpc, target_vpc = vpcs
    with pytest.raises(OSError):
        answer(f"{TARGET_VPC}-h", HUB_HOST, HUB_API)
    peering = Peering(hub_vpc, target_vpc, cidrs=(HUB_CIDR, TARGET_CIDR), ports=((HUB_API,), (NOTEBOOK_PORT,)))
    with peering:
        assert answer(f"{TARGET_VPC}-h", HUB_HOST, HUB_API) == NOTEBOOK
    with pytest.raises(OSError):
        answer(f"{TARGET_VPC}-h", HUB_HOST, HUB_API)
