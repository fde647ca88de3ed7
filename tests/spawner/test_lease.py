"""The hub lease: with two hub processes alive for one hub id, only the lease holder changes EC2.

Two "hubs" here are two spawner sets with different lease holder ids (what two hub processes
are), sharing one hub id, one lease table and the AWS emulator over HTTP. The hub database they
would share is played by handing hub B the state hub A saved.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import botocore.exceptions
import pytest
from ec2spawner.aws import Aws
from ec2spawner.lease import HubLease, LeaseError, LeaseHealthHandler
from ec2spawner.payloads import (
    lease_acquire_params,
    lease_read_params,
    lease_release_params,
)
from ec2spawner.spawner import EC2Spawner
from ec2spawner.sweeper import OrphanSweeper, Ownership
from jupyterhub.spawner import SpawnException
from spawner_testing import REGION, live_instances
from test_spawner_sweeper import orphan_of
from tornado import httpclient, httpserver, netutil, web
from waiting import until

STANDBY = ("This hub is standing by while another hub takes over (it does not hold the hub lease), "
           "so it cannot start servers. Try again in a minute.")


def test_lease_payloads():
    assert lease_acquire_params(table="t", hub_id="h", holder="i-1/42/ab", now=1000.0, duration=60) == {
        "TableName": "t",
        "Item": {"hub_id": {"S": "h"}, "holder": {"S": "i-1/42/ab"}, "expires_at": {"N": "1060.000"}},
        "ConditionExpression": "attribute_not_exists(#hub) OR #holder = :holder OR #expires < :now",
        "ExpressionAttributeNames": {"#hub": "hub_id", "#holder": "holder", "#expires": "expires_at"},
        "ExpressionAttributeValues": {":holder": {"S": "i-1/42/ab"}, ":now": {"N": "1000.000"}},
    }
    assert lease_release_params(table="t", hub_id="h", holder="i-1/42/ab") == {
        "TableName": "t",
        "Key": {"hub_id": {"S": "h"}},
        "ConditionExpression": "#holder = :holder",
        "ExpressionAttributeNames": {"#holder": "holder"},
        "ExpressionAttributeValues": {":holder": {"S": "i-1/42/ab"}},
    }
    assert lease_read_params(table="t", hub_id="h") == {
        "TableName": "t", "Key": {"hub_id": {"S": "h"}}, "ConsistentRead": True}


@pytest.fixture(scope="session")
def dynamodb(emulator):
    import boto3

    return boto3.client("dynamodb", region_name=REGION, endpoint_url=emulator.endpoint_url)


@pytest.fixture
async def table(dynamodb):
    """A lease table as infra makes it (partition key hub_id), fresh per test."""
    name = "lease-" + uuid.uuid4().hex[:8]
    dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "hub_id", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "hub_id", "AttributeType": "S"}])
    yield name
    await HubLease.stop_all(release=False)
    dynamodb.delete_table(TableName=name)


def lease_item(dynamodb, table, hub_id):
    return dynamodb.get_item(TableName=table, Key={"hub_id": {"S": hub_id}}, ConsistentRead=True).get("Item")


def hub(new_spawner, table, holder, **timing):
    """A spawner factory for one hub process: its holder id, the shared hub id and lease table."""
    traits = {"lease_table": table, "lease_holder": holder, "lease_wait": 5, **timing}
    return lambda user="alice", **kw: new_spawner(user, **traits, **kw)


def instance_state(ec2, iid):
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


async def test_only_the_lease_holder_changes_ec2(new_spawner, emu, ec2, hub_id, table, caplog):
    caplog.set_level(logging.INFO)
    hub_a, hub_b = hub(new_spawner, table, "hub-a"), hub(new_spawner, table, "hub-b")
    alice_a = hub_a("alice")
    assert await alice_a.lease().settled(5)  # the first hub takes the free lease
    await alice_a.start()
    iid = alice_a.instance_id

    # Hub B, alive with the same hub id, knows the server from the (shared) hub database.
    alice_b = hub_b("alice")
    alice_b.load_state(alice_a.get_state())
    assert not await alice_b.lease().settled(5)
    assert "another hub (hub-a) holds the lease" in alice_b.lease().describe()

    # B's stop changes nothing, says so, and keeps the instance named for the server.
    with pytest.raises(LeaseError, match=f"not stopped: .*standing by.*Instance {iid} is left as it is"):
        await alice_b.stop()
    assert alice_b.kept_instance_id == iid and alice_b.instance_id is None
    assert instance_state(ec2, iid) == "running"

    # B refuses to start a server, with a 503 that says why; nothing is launched.
    bob_b = hub_b("bob")
    with pytest.raises(SpawnException) as refused:
        await bob_b.start()
    assert (refused.value.status_code, refused.value.message) == (503, STANDBY)
    assert live_instances(ec2, hub_id, "bob") == []

    # B's sweeper, whose database knows nothing, terminates nothing, even with no grace.
    orphan = orphan_of(ec2, hub_id)
    sweeper_b = OrphanSweeper(Aws.for_region(REGION), bob_b._watcher(), hub_id=hub_id,
                              secret_prefix=f"/ec2hub/{hub_id}/servers/", owned=Ownership, grace=0,
                              lease=bob_b.lease())
    assert await sweeper_b.sweep_once() == []
    assert instance_state(ec2, iid) == "running"
    assert instance_state(ec2, orphan) in ("pending", "running")
    assert "ec2hub sweeper: not sweeping: this hub (hub-b) is standing by" in caplog.text

    # A, the holder, sweeps (its database owns alice's instance) and stops its own server.
    sweeper_a = OrphanSweeper(Aws.for_region(REGION), alice_a._watcher(), hub_id=hub_id,
                              secret_prefix=f"/ec2hub/{hub_id}/servers/",
                              owned=lambda: Ownership.of(EC2Spawner.owned_instance_ids(hub_id) - {orphan}),
                              grace=0, lease=alice_a.lease())
    assert [(d.instance_id, d.terminate) for d in await sweeper_a.sweep_once()] == [(orphan, True)]
    await alice_a.stop()
    assert instance_state(ec2, iid) in ("shutting-down", "terminated")


async def test_expiry_hands_the_lease_over(new_spawner, emu, ec2, dynamodb, hub_id, table):
    timing = {"lease_duration": 2.0, "lease_renew_interval": 0.3, "lease_margin": 0.5}
    a = hub(new_spawner, table, "hub-a", **timing)("alice")
    b = hub(new_spawner, table, "hub-b", **timing)("bob")
    assert await a.lease().settled(5)
    assert not await b.lease().settled(5)
    expires = float(lease_item(dynamodb, table, hub_id)["expires_at"]["N"])

    await a.lease().stop(release=False)  # hub A dies: no release, its lease runs out
    await until(b.lease().holds, 10, "hub B to take the lease over")
    assert time.time() >= expires, "taken over before the dead holder's lease expired"
    assert lease_item(dynamodb, table, hub_id)["holder"] == {"S": "hub-b"}
    await b.start()
    assert [i["InstanceId"] for i in live_instances(ec2, hub_id, "bob")] == [b.instance_id]
    await b.stop()


async def test_a_clean_shutdown_gives_the_lease_up_at_once(new_spawner, emu, dynamodb, hub_id, table):
    timing = {"lease_duration": 30.0, "lease_renew_interval": 0.3, "lease_margin": 5.0}
    a = hub(new_spawner, table, "hub-a", **timing)("alice")
    b = hub(new_spawner, table, "hub-b", **timing)("bob")
    assert await a.lease().settled(5)
    assert not await b.lease().settled(5)
    given_up = time.monotonic()
    await a.lease().stop(release=True)
    await until(b.lease().holds, 10, "hub B to take the lease")
    assert time.monotonic() - given_up < 10, "B waited for the expiry instead of taking the released lease"
    assert lease_item(dynamodb, table, hub_id)["holder"] == {"S": "hub-b"}


async def test_a_hub_that_stood_by_restarts_when_it_takes_over_and_keeps_the_lease_for_its_host(
        new_spawner, emu, ec2, dynamodb, hub_id, table, caplog):
    """JupyterHub loaded its servers at its start, while the other hub acted: the standby that
    takes the lease acts on none of it, and restarts; its host's next process renews the lease
    at once (it was not given up at the shutdown) and acts."""
    timing = {"lease_duration": 30.0, "lease_renew_interval": 0.3, "lease_margin": 5.0}
    restarts = []
    a = hub(new_spawner, table, "hub-a", **timing)("alice")
    b = hub(new_spawner, table, "hub-b", lease_restart_on_takeover=True, **timing)("bob")
    assert await a.lease().settled(5)
    b_lease = b.lease()
    b_lease.on_takeover = restarts.append  # what the hub process does: restart_hub_process
    assert not await b_lease.settled(5)
    await a.lease().stop(release=True)  # the old hub goes (the replacement's cleanup)
    await until(lambda: restarts, 10, "hub B to take the lease over")
    assert restarts == ["hub-a"] and not b_lease.holds()
    assert "took the lease of hub" in b_lease.describe() and "from hub-a after standing by" in b_lease.describe()
    assert "restarts, so that the hub that acts starts from the hub database" in caplog.text
    with pytest.raises(SpawnException) as refused:
        await b.start()
    assert refused.value.status_code == 503
    assert live_instances(ec2, hub_id, "bob") == []
    # Its shutdown leaves the lease to its host (no release); its next process renews it at once.
    await HubLease.stop_all(release=True)
    assert lease_item(dynamodb, table, hub_id)["holder"] == {"S": "hub-b"}
    restarted = hub(new_spawner, table, "hub-b", lease_restart_on_takeover=True, **timing)("bob")
    assert await restarted.lease().settled(5)
    await restarted.start()
    assert [i["InstanceId"] for i in live_instances(ec2, hub_id, "bob")] == [restarted.instance_id]
    await restarted.stop()
    assert restarts == ["hub-a"]


async def test_a_hub_that_takes_over_asks_its_host_for_a_restart_and_ends_itself_if_nothing_acts(tmp_path, monkeypatch):
    """restart_hub_process, the hub's on_takeover: with the host's request file (a path unit
    restarts the hub at once) it writes the file and ends nothing; if nothing restarts it, or the
    file cannot be written, the process ends itself (SIGTERM) and systemd's Restart= starts it."""
    import os
    import signal

    from ec2spawner import lease as lease_module
    from jupyterhub.app import JupyterHub

    killed = []
    monkeypatch.setattr(JupyterHub, "initialized", classmethod(lambda cls: True))
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(lease_module, "RESTART_REQUEST_WAIT_S", 0.2)
    request = tmp_path / "restart-requested"
    lease_module.restart_hub_process("hub-a", request=str(request))
    assert request.read_text() == "hub-a\n" and killed == []  # asked; its service manager acts
    await until(lambda: killed, 10, "the process to end itself, as nothing restarted it")
    assert killed == [(os.getpid(), signal.SIGTERM)]
    killed.clear()
    lease_module.restart_hub_process("hub-a", request=str(tmp_path / "no-such-directory" / "restart-requested"))
    assert killed == [(os.getpid(), signal.SIGTERM)]  # could not ask: at once
    killed.clear()
    lease_module.restart_hub_process("hub-a")  # no request file configured: at once
    assert killed == [(os.getpid(), signal.SIGTERM)]


async def test_a_hub_restarted_on_its_host_takes_its_lease_back_at_once(
        new_spawner, emu, dynamodb, hub_id, table, tmp_path, monkeypatch):
    """A hub killed (SIGKILL: nothing released) and restarted by systemd on the same host is the
    same holder: it acts at once instead of standing by until its old lease expires."""
    from ec2spawner import lease as lease_module

    record = tmp_path / "instance-id"
    record.write_text("i-0123456789abcdef0\n")
    monkeypatch.setattr(lease_module, "_CLOUD_INIT_INSTANCE_ID", record)
    monkeypatch.setattr(lease_module, "_HOLDER_ID", None)
    holder = lease_module.default_holder_id()
    assert holder == "i-0123456789abcdef0"
    timing = {"lease_duration": 60.0, "lease_renew_interval": 0.3, "lease_margin": 5.0}
    first = hub(new_spawner, table, holder, **timing)("alice")
    assert await first.lease().settled(5)
    await first.lease().stop(release=False)  # killed: the lease stays written for 60 s
    await HubLease.stop_all(release=False)
    monkeypatch.setattr(lease_module, "_HOLDER_ID", None)  # a new process on the same host
    restarted = hub(new_spawner, table, lease_module.default_holder_id(), **timing)("alice")
    assert await restarted.lease().settled(5), restarted.lease().describe()
    assert lease_item(dynamodb, table, hub_id)["holder"] == {"S": "i-0123456789abcdef0"}


async def test_a_holder_that_cannot_renew_stops_acting_before_its_lease_expires(
        new_spawner, emu, ec2, dynamodb, hub_id, table, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    # Long enough that a first DynamoDB call slowed by a loaded machine (2 s seen on CI) still
    # leaves the fresh lease outside its margin when the start asks.
    duration, renew, margin = 10.0, 0.5, 3.0
    timing = {"lease_duration": duration, "lease_renew_interval": renew, "lease_margin": margin}
    # Hub A's own AWS seam, so that only A loses DynamoDB.
    aws_a = Aws(REGION)
    lease_a = HubLease.ensure(aws_a, table=table, hub_id=hub_id, holder="hub-a", duration=duration,
                              renew_interval=renew, margin=margin)
    a = hub(new_spawner, table, "hub-a", **timing)("alice")
    assert a.lease() is lease_a and await lease_a.settled(5)
    await a.start()
    iid = a.instance_id
    expires = float(lease_item(dynamodb, table, hub_id)["expires_at"]["N"])

    real_invoke = aws_a._invoke

    def unreachable(service, operation, params):
        if service == "dynamodb":
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://dynamodb")
        return real_invoke(service, operation, params)

    monkeypatch.setattr(aws_a, "_invoke", unreachable)
    cut = time.time()
    await until(lambda: not lease_a.holds(), 3 * duration, "hub A to stop acting")
    stopped_acting = time.time()
    latest_expiry = float(lease_item(dynamodb, table, hub_id)["expires_at"]["N"])
    assert latest_expiry < cut + duration + 0.5  # no renewal reached DynamoDB after the cut
    assert stopped_acting < latest_expiry - 0.5, "A still acted within the margin of its expiry"
    assert expires <= latest_expiry
    assert "renewal failed (DynamoDB did not answer" in caplog.text

    # A changes nothing any more: no stop, no start, no sweep.
    with pytest.raises(LeaseError):
        await a.stop()
    assert instance_state(ec2, iid) == "running"
    with pytest.raises(SpawnException) as refused:
        await hub(new_spawner, table, "hub-a", **timing)("carol").start()
    assert refused.value.status_code == 503
    sweeper_a = OrphanSweeper(aws_a, a._watcher(), hub_id=hub_id, secret_prefix=f"/ec2hub/{hub_id}/servers/",
                              owned=Ownership, grace=0, lease=lease_a)
    assert await sweeper_a.sweep_once() == []
    assert instance_state(ec2, iid) == "running"

    # Hub B takes over only once A's lease expired, and the server is still there for it.
    b = hub(new_spawner, table, "hub-b", **timing)("alice")
    await until(b.lease().holds, 3 * duration, "hub B to take over")
    assert time.time() >= latest_expiry
    b.load_state(a.get_state())  # the kept instance, as the shared database names it
    await b.start()
    assert b.instance_id == iid
    await b.stop()
    await lease_a.stop(release=False)


async def test_a_missing_lease_table_is_reported_and_nothing_changes(new_spawner, emu, ec2, hub_id, caplog):
    caplog.set_level(logging.INFO)
    spawner = new_spawner("alice", lease_table="no-such-table", lease_holder="hub-a", lease_wait=5)
    with pytest.raises(SpawnException) as refused:
        await spawner.start()
    assert refused.value.status_code == 503
    assert "the lease table no-such-table does not exist" in caplog.text
    assert live_instances(ec2, hub_id) == []
    await HubLease.stop_all(release=False)


async def test_health_check_answers_200_only_on_the_lease_holder(new_spawner, emu, hub_id, table):
    a = hub(new_spawner, table, "hub-a")("alice")
    assert await a.lease().settled(5)
    b_lease = HubLease(Aws.for_region(REGION), table=table, hub_id=hub_id, holder="hub-b")
    assert not await b_lease.attempt()

    app = web.Application([
        ("/hub/ec2hub/health", LeaseHealthHandler, {"hub_id": hub_id, "lease_table": table}),
        ("/other/ec2hub/health", LeaseHealthHandler, {"hub_id": "hub-not-started", "lease_table": table}),
        ("/none/ec2hub/health", LeaseHealthHandler, {"hub_id": hub_id, "lease_table": None}),
    ])
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    server = httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    client = httpclient.AsyncHTTPClient(force_instance=True)

    async def get(path):
        response = await client.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False)
        return response.code, json.loads(response.body)

    try:
        code, body = await get("/hub/ec2hub/health")
        assert (code, body["lease"], body["holder"]) == (200, "held", "hub-a")
        assert (await get("/other/ec2hub/health"))[0] == 503
        assert (await get("/none/ec2hub/health"))[0] == 200
        await a.lease().stop(release=False)  # this process stops holding it
        code, body = await get("/hub/ec2hub/health")
        assert (code, body["lease"]) == (503, "standby")
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()
