"""The simulated VPC's bridge: what every instance's traffic crosses."""

import json

import pytest

from sandbox.netns import (
    Vpc,
    add_netns,
    connect_in_netns,
    delete_netns,
    ip,
    list_netns,
    listen_in_netns,
)

VPC = "ec2hub-vtest"


def bridge_mac(vpc: Vpc) -> str:
    links = json.loads(ip("-j", "link", "show", Vpc.BRIDGE, netns=vpc.netns).stdout)
    return links[0]["address"]


@pytest.fixture
def vpc():
    with Vpc(VPC, gateways=["10.9.1.1/24", "10.9.2.1/24"]) as made:
        yield made
    for name in list_netns():
        if name.startswith(VPC):
            delete_netns(name)
    assert not [n for n in list_netns() if n.startswith(VPC)]


def test_gateway_address_survives_instances_coming_and_going(vpc):
    """Hosts cache their gateway's hardware address; if the bridge's changed when an instance
    left (a Linux bridge otherwise takes its lowest port's), every other host lost its gateway."""
    first = bridge_mac(vpc)
    hosts = [f"{VPC}-h{n}" for n in range(3)]
    for n, host in enumerate(hosts):
        add_netns(host)
        vpc.plug(host, f"10.9.1.{10 + n}", 24, "10.9.1.1")
    for host in hosts[:2]:
        delete_netns(host)
        assert bridge_mac(vpc) == first
    # and the remaining host still reaches its gateway and the other subnet's, over TCP
    listener = listen_in_netns(vpc.netns, "0.0.0.0", 0)
    try:
        for target in ("10.9.1.1", "10.9.2.1"):
            connect_in_netns(hosts[2], target, listener.getsockname()[1], timeout=3).close()
    finally:
        listener.close()
