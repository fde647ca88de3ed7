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


def dns_a_query(netns: str, server: str, name: str) -> tuple[int, list[str]]:
    """One DNS A query over UDP from inside ``netns``: (RCODE, the answer's addresses)."""
    import socket
    import struct

    from sandbox.netns import socket_in_netns

    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(2)
        sock.sendto(struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question, (server, 53))
        reply, _ = sock.recvfrom(512)
    rcode, answers = reply[3] & 0x0F, struct.unpack(">H", reply[6:8])[0]
    addresses, offset = [], 12 + len(question)
    for _ in range(answers):  # each answer: a compressed name pointer (2), type, class, ttl, length
        rtype, _, _, length = struct.unpack(">HHIH", reply[offset + 2:offset + 12])
        if rtype == 1:
            addresses.append(socket.inet_ntoa(reply[offset + 12:offset + 12 + length]))
        offset += 12 + length
    return rcode, addresses


def test_vpc_dns_answers_its_host_records_and_nothing_else():
    """The sandbox names the RDS endpoint this way: the hub resolves it to the database's relay."""
    endpoint = "ec2hub-db.aaaaaaaaaa.us-east-1.rds.amazonaws.com"
    from waiting import wait_until

    def answered(name):
        try:
            return dns_a_query(made.netns, "10.9.1.1", name)
        except TimeoutError:  # dnsmasq not listening yet
            return None

    with Vpc(VPC + "d", gateways=["10.9.1.1/24"], host_records={endpoint: "10.9.1.1"}) as made:
        rcode, addresses = wait_until(lambda: answered(endpoint), 30, "the VPC's DNS")
        assert (rcode, addresses) == (0, ["10.9.1.1"])
        assert dns_a_query(made.netns, "10.9.1.1", "example.invalid")[0] == 3  # NXDOMAIN


def test_vpc_dns_follows_the_records_it_is_given():
    """How the sandbox serves the emulator's Route 53 private zone (sandbox.route53): a record
    changed or removed is answered so at once."""
    from waiting import wait_until

    def answer(name):
        try:
            return dns_a_query(made.netns, "10.9.1.1", name)
        except TimeoutError:  # dnsmasq not listening yet
            return None

    with Vpc(VPC + "z", gateways=["10.9.1.1/24"]) as made:
        wait_until(lambda: answer("hub.ec2hub.internal") == (3, []), 30, "the VPC's DNS (NXDOMAIN at first)")
        made.set_dns_records("route53-Z1", {"hub.ec2hub.internal": "10.9.1.5"})
        wait_until(lambda: answer("hub.ec2hub.internal") == (0, ["10.9.1.5"]), 10, "the new record")
        made.set_dns_records("route53-Z1", {"hub.ec2hub.internal": "10.9.1.8"})
        wait_until(lambda: answer("hub.ec2hub.internal") == (0, ["10.9.1.8"]), 10, "the changed record")
        made.set_dns_records("route53-Z1", {})
        wait_until(lambda: answer("hub.ec2hub.internal") == (3, []), 10, "the removed record")


def test_vpc_dns_follows_the_emulators_private_zone():
    """sandbox.route53: what the hub host UPSERTs into the emulator's Route 53 is what the VPC resolves."""
    import boto3
    from moto import mock_aws
    from waiting import wait_until

    from sandbox.route53 import PrivateZoneFollower

    def answer(name):
        try:
            return dns_a_query(made.netns, "10.9.1.1", name)
        except TimeoutError:  # dnsmasq not listening yet
            return None

    def upsert(address):
        r53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
            "Name": "hub.ec2hub.internal", "Type": "A", "TTL": 10, "ResourceRecords": [{"Value": address}]}}]})

    with mock_aws(), Vpc(VPC + "r", gateways=["10.9.1.1/24"]) as made:
        r53 = boto3.client("route53", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        zone = r53.create_hosted_zone(Name="ec2hub.internal", CallerReference="vpc-test")["HostedZone"]["Id"].split("/")[-1]
        upsert("10.9.1.5")
        follower = PrivateZoneFollower(r53, made, [zone]).start()
        try:
            wait_until(lambda: answer("hub.ec2hub.internal") == (0, ["10.9.1.5"]), 30, "the zone's record")
            upsert("10.9.1.8")  # a replacement hub host's start
            wait_until(lambda: answer("hub.ec2hub.internal") == (0, ["10.9.1.8"]), 10, "the changed record")
        finally:
            follower.stop()
