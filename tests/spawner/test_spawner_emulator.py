"""The AWS emulator's own behaviours: pending time, delays, faults, events, HTTP control."""

from __future__ import annotations

import threading
import time
import urllib.error

import pytest

from sandbox.emulator import EmulatorClient


@pytest.fixture
def subnet(platform):
    return platform.subnets["us-east-1a"]


def run(ec2, subnet, **kw):
    return ec2.run_instances(ImageId="ami-12345678", InstanceType="t3.medium", SubnetId=subnet,
                             MinCount=1, MaxCount=1, **kw)["Instances"][0]


def state(ec2, iid):
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


def wait_state(ec2, iid, wanted, timeout=10.0):
    """Wait until DescribeInstances says ``wanted`` (a loaded machine may be slow to get there)."""
    deadline = time.monotonic() + timeout
    while (seen := state(ec2, iid)) != wanted:
        assert time.monotonic() < deadline, f"{iid} still {seen}, not {wanted}"
        time.sleep(0.05)


def test_pending_then_running_and_listener_sees_it(emu, ec2, subnet):
    seen = []

    def listener(event):  # may call the emulator's own API: runs outside its locks
        if event["state"] == "running":
            event["tags"] = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [event["instance_id"]]}])
        seen.append(event)

    unsubscribe = emu.add_listener(listener)
    try:
        emu.set_timing(pending_s=1.0)
        launched = run(ec2, subnet)
        # The state in RunInstances' own answer: no describe racing the pending timer.
        assert launched["State"]["Name"] == "pending"
        iid = launched["InstanceId"]
        wait_state(ec2, iid, "running")
        deadline = time.monotonic() + 5
        while not [e for e in seen if e["instance_id"] == iid]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [(e["instance_id"], e["state"]) for e in seen if e["instance_id"] == iid] == [(iid, "running")]
        assert seen[-1]["private_ip"].startswith("10.0.1.")
    finally:
        unsubscribe()


def test_stop_and_terminate_pass_through_transitional_states(emu, ec2, subnet):
    # The transitional state is read from each call's own answer and the final one waited for:
    # no describe or sleep races the emulator's timers on a loaded machine.
    emu.set_timing(pending_s=0, stopping_s=1.0, shutting_down_s=1.0)
    iid = run(ec2, subnet)["InstanceId"]
    [stopping] = ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"]
    assert stopping["CurrentState"]["Name"] == "stopping"
    wait_state(ec2, iid, "stopped")
    [terminating] = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"]
    assert terminating["CurrentState"]["Name"] == "shutting-down"
    wait_state(ec2, iid, "terminated")


def test_client_token_is_idempotent(emu, ec2, subnet):
    first = run(ec2, subnet, ClientToken="same-token-1")["InstanceId"]
    assert run(ec2, subnet, ClientToken="same-token-1")["InstanceId"] == first
    assert run(ec2, subnet, ClientToken="other-token-1")["InstanceId"] != first


def test_describe_instances_finds_a_launch_by_its_client_token(emu, ec2, subnet):
    """The spawner asks this when RunInstances' answer was lost (moto has no such filter: a 500)."""
    iid = run(ec2, subnet, ClientToken="lookup-token-1")["InstanceId"]
    run(ec2, subnet, ClientToken="lookup-token-2")

    def by_token(token):
        answer = ec2.describe_instances(Filters=[{"Name": "client-token", "Values": [token]}])
        return [i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"]]

    assert by_token("lookup-token-1") == [iid]
    assert by_token("never-used-token") == []


def test_instance_calls_take_turns_in_moto(emu, ec2, subnet, monkeypatch):
    """Each EC2 call is atomic, as EC2 applies it: a DescribeInstances waits while a RunInstances
    is inside moto's instance model, which is not thread-safe (two RunInstances in one subnet once
    advanced its shared IP generator at once: a 500 that botocore could not parse, and a chaos run
    lost a spawn). Other services do not wait for it."""
    import boto3

    from sandbox import emulator as emulator_module

    inside, let_go, settled = threading.Event(), threading.Event(), threading.Event()
    launching: list[threading.Thread] = []  # the request thread of the held RunInstances
    waited: list[bool] = []  # another request asked for the turn meanwhile: was it taken (it waits)?
    before, turn = emu.before_run_instances, emulator_module._INSTANCES_TURN

    def slow_before(backend, kwargs):  # inside moto's RunInstances, as its own work would be
        if kwargs.get("client_token") == "turns-token-1":
            launching.append(threading.current_thread())
            inside.set()
            assert let_go.wait(30)
        return before(backend, kwargs)

    class WatchedTurn:
        """The emulator's turn, telling when another request asks for it while the launch is inside."""

        def __enter__(self):
            if inside.is_set() and not let_go.is_set() and threading.current_thread() not in launching:
                free = turn.acquire(blocking=False)
                if free:
                    turn.release()
                waited.append(not free)
                settled.set()
            return turn.__enter__()

        def __exit__(self, *exc):
            return turn.__exit__(*exc)

    monkeypatch.setattr(emu, "before_run_instances", slow_before)
    monkeypatch.setattr(emulator_module, "_INSTANCES_TURN", WatchedTurn())
    done: dict[str, object] = {}

    def describe():
        done["describe"] = ec2.describe_instances()
        settled.set()

    launch = threading.Thread(target=lambda: done.setdefault("run", run(ec2, subnet, ClientToken="turns-token-1")))
    launch.start()
    reader = threading.Thread(target=describe)
    try:
        assert inside.wait(30)
        # Another service meanwhile: answered (the hub's lease renewals must not wait for EC2).
        ssm = boto3.client("ssm", endpoint_url=emu.endpoint_url, region_name="us-east-1")
        ssm.put_parameter(Name="/turns/other-service", Value="answered", Type="String", Overwrite=True)
        reader.start()
        # Either the describe asks for the turn (and waits there), or it ran beside the launch.
        assert settled.wait(30)
        assert "describe" not in done and waited == [True], "a DescribeInstances ran inside moto beside a RunInstances"
    finally:
        let_go.set()
    launch.join(30)
    reader.join(30)
    ids = [i["InstanceId"] for r in done["describe"]["Reservations"] for i in r["Instances"]]
    assert done["run"]["InstanceId"] in ids  # it waited for the launch, and then saw it


def test_capacity_and_throttle_faults_over_http(emu, ec2, subnet):
    client = EmulatorClient(emu.endpoint_url)
    answer = client.faults(capacity=[{"az": "us-east-1a", "instance_type": "t3.medium"}],
                           throttle={"burst": 1, "per_second": 0.01})
    assert answer["capacity"] == [{"az": "us-east-1a", "instance_type": "t3.medium"}]
    with pytest.raises(ec2.exceptions.ClientError) as info:
        run(ec2, subnet)
    assert info.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    client.faults(clear_capacity=True)
    with pytest.raises(ec2.exceptions.ClientError) as info:  # bucket empty; botocore retried and gave up
        run(ec2, subnet)
    assert info.value.response["Error"]["Code"] == "RequestLimitExceeded"
    assert client.faults(throttle=None)["throttle"] is None
    with pytest.raises(urllib.error.HTTPError) as bad:
        client._request("POST", "nope", {})
    assert bad.value.code == 404


def test_spot_interruption_and_event_long_poll_over_http(emu, ec2, subnet):
    emu.set_timing(pending_s=0)
    client = EmulatorClient(emu.endpoint_url)
    iid = run(ec2, subnet)["InstanceId"]
    after = client.events(0)["last"]
    threading.Timer(0.3, client.terminate, args=(iid,), kwargs={"spot": True}).start()
    answer = client.events(after, timeout=5)
    [event] = answer["events"]
    assert (event["instance_id"], event["state"], event["reason"]) == (iid, "terminated", "Server.SpotInstanceTermination")
    reason = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["StateReason"]
    assert reason["Code"] == "Server.SpotInstanceTermination"
    assert client.state()["instances"][iid] == "terminated"


def test_dynamodb_writes_are_atomic_while_a_transaction_fails_beside_them(emu):
    """A transaction that fails (a condition) must not undo a concurrent writer's update, as in
    DynamoDB: the spend ledger's and the lease's writes meet like this when two servers stop at once.
    (moto restores a failed transaction's whole-table snapshot, taken before the other write.)"""
    import boto3

    def client():
        return boto3.client("dynamodb", endpoint_url=emu.endpoint_url, region_name="us-east-1")

    ddb, table = client(), "atomic-writes"
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                     BillingMode="PAY_PER_REQUEST")
    # Other items, as a month's ledger has: a failed transaction's snapshot copies them all.
    for first in range(0, 600, 25):
        ddb.batch_write_item(RequestItems={table: [
            {"PutRequest": {"Item": {"k": {"S": f"user#{i}"}, "usd": {"N": "1.5"}}}} for i in range(first, first + 25)]})
    adds, done, refused, committed = 250, threading.Event(), [], []

    def add():
        writer = client()
        try:
            for _ in range(adds):
                writer.transact_write_items(TransactItems=[{"Update": {
                    "TableName": table, "Key": {"k": {"S": "group#lab"}}, "UpdateExpression": "ADD usd :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}}])
        finally:
            done.set()

    def fail():
        writer = client()
        while not done.is_set():
            try:
                writer.transact_write_items(TransactItems=[{"Update": {
                    "TableName": table, "Key": {"k": {"S": "instance#i-0"}}, "UpdateExpression": "SET running = :no",
                    "ConditionExpression": "attribute_exists(running)",
                    "ExpressionAttributeValues": {":no": {"BOOL": False}}}}])
                committed.append(1)
            except writer.exceptions.TransactionCanceledException:
                refused.append(1)

    threads = [threading.Thread(target=add), threading.Thread(target=fail)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert refused and not committed, "the failing transaction never ran beside the writer, or did not fail"
    total = ddb.get_item(TableName=table, Key={"k": {"S": "group#lab"}}, ConsistentRead=True)["Item"]["usd"]["N"]
    assert int(total) == adds
    ddb.delete_table(TableName=table)
