"""The emulator's fault verbs the chaos suite and `python -m sandbox inject` use: outage, holds,
capacity on resume, a lagging `stopped`, reboot events. Against its own emulator process, over HTTP."""

from __future__ import annotations

import subprocess
import sys

import boto3
import botocore.config
import botocore.exceptions
import pytest
from chaos_lab import EmulatorProcess, wait_until

from sandbox.emulator import EmulatorClient

# One attempt per call: the tests look at what a single request meets.
ONCE = botocore.config.Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5, read_timeout=30)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    process = EmulatorProcess(tmp_path_factory.mktemp("emulator") / "emulator.log", pending_s=0).start()
    yield process
    process.stop()


@pytest.fixture
def aws(emulator):
    kw = {"region_name": "us-east-1", "endpoint_url": emulator.endpoint_url, "aws_access_key_id": "t",
          "aws_secret_access_key": "t", "config": ONCE}
    client = EmulatorClient(emulator.endpoint_url)
    ec2, ssm = boto3.client("ec2", **kw), boto3.client("ssm", **kw)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    yield type("Aws", (), {"ec2": ec2, "ssm": ssm, "client": client, "subnet": subnet})
    client.outage(0)
    client.faults(pending_s=0, stopping_s=0, start_lag_s=0, visibility_lag_s=0, clear_capacity=True)
    for hold in client.state()["holds"]:
        if not hold["released"]:
            client.release(hold["id"])


def run(aws, user="alice", **kw):
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "ec2hub:user", "Value": user}]}]
    return aws.ec2.run_instances(ImageId="ami-12345678", InstanceType="t3.medium", SubnetId=aws.subnet,
                                 MinCount=1, MaxCount=1, TagSpecifications=tags, **kw)["Instances"][0]["InstanceId"]


def state(aws, iid):
    return aws.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


def hold_of(aws, hold_id):
    return next(h for h in aws.client.state()["holds"] if h["id"] == hold_id)


def test_outage_fails_ec2_and_ssm_at_connection_level_then_ends_by_itself(aws):
    aws.ssm.put_parameter(Name="/outage/x", Value="v", Type="SecureString")
    answer = aws.client.outage(1.5)
    assert 0 < answer["outage_s"] <= 1.5
    refused = answer["counters"].get("Refused", 0)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        aws.ec2.describe_instances()
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        aws.ssm.get_parameter(Name="/outage/x", WithDecryption=True)
    state_now = aws.client.state()  # the control API still answers
    assert state_now["counters"]["Refused"] >= refused + 2  # (a closed keep-alive connection is retried once)
    assert state_now["calls"]["DescribeInstances"] >= 1 and state_now["calls"]["GetParameter"] >= 1
    # Nobody ends it: it is over once its seconds have passed.
    wait_until(lambda: aws.client.state()["outage_s"] == 0, 10, "the outage to end")
    assert aws.ssm.get_parameter(Name="/outage/x", WithDecryption=True)["Parameter"]["Value"] == "v"
    aws.ec2.describe_instances()


def _caller_process(emulator, user: str) -> subprocess.Popen:
    """A client in a process of its own that calls RunInstances, to be killed while its call is held."""
    code = (
        "import boto3, sys; ec2 = boto3.client('ec2', region_name='us-east-1', endpoint_url=sys.argv[1], "
        "aws_access_key_id='t', aws_secret_access_key='t'); "
        "subnet = ec2.describe_subnets()['Subnets'][0]['SubnetId']; "
        "ec2.run_instances(ImageId='ami-12345678', InstanceType='t3.medium', SubnetId=subnet, MinCount=1, MaxCount=1, "
        "TagSpecifications=[{'ResourceType': 'instance', 'Tags': [{'Key': 'ec2hub:user', 'Value': sys.argv[2]}]}])"
    )
    return subprocess.Popen([sys.executable, "-c", code, emulator.endpoint_url, user])


def users_instances(aws, user):
    return [i["InstanceId"] for r in aws.ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if {"Key": "ec2hub:user", "Value": user} in i.get("Tags", [])]


@pytest.mark.parametrize(("drop", "made"), [(False, 1), (True, 0)], ids=["released-in-flight", "dropped"])
def test_held_run_instances_of_a_killed_client(emulator, aws, drop, made):
    user = f"killed-client-{drop}"
    hold = aws.client.hold("RunInstances", user)
    caller = _caller_process(emulator, user)
    try:
        wait_until(lambda: hold_of(aws, hold["id"])["waiting"] == 1, 30, "the call to be held")
        other = run(aws, "other-user")  # a call that does not match passes by
        assert state(aws, other) == "running"
    finally:
        caller.kill()
        caller.wait()
    aws.client.release(hold["id"], drop=drop)
    # Released: EC2 makes the instance although nobody hears the answer. Dropped: it never
    # reached EC2. Either way the hold has no call left waiting.
    wait_until(lambda: hold_of(aws, hold["id"])["waiting"] == 0, 10, "the held call to end")
    if made:
        # The call leaves the hold, then reaches moto: on a loaded machine that takes a while.
        wait_until(lambda: users_instances(aws, user), 30, "the released call's instance")
    # A dropped call ends before moto (Dropped is raised as it leaves the hold): nothing can follow.
    assert len(users_instances(aws, user)) == made


def test_transition_holds_keep_an_instance_pending_or_stopping(aws):
    pending = aws.client.hold("pending", "ec2hub:user=slow-boot")
    iid = run(aws, "slow-boot")
    fast = run(aws, "fast-boot")
    assert hold_of(aws, pending["id"])["held"] == 1
    # The instance nobody holds, launched after, ends its pending period: the ticker has passed.
    wait_until(lambda: state(aws, fast) == "running", 10, "the unheld instance running")
    assert state(aws, iid) == "pending"
    aws.client.release(pending["id"])
    wait_until(lambda: state(aws, iid) == "running", 10, "running once released")

    stopping = aws.client.hold("stopping", iid)
    aws.ec2.stop_instances(InstanceIds=[iid, fast])
    wait_until(lambda: state(aws, fast) == "stopped", 10, "the unheld instance stopped")
    assert state(aws, iid) == "stopping"
    aws.client.release(stopping["id"])
    wait_until(lambda: state(aws, iid) == "stopped", 10, "stopped once released")


def test_resume_meets_capacity_and_a_lagging_stopped(aws):
    iid = run(aws)
    aws.ec2.stop_instances(InstanceIds=[iid])
    wait_until(lambda: state(aws, iid) == "stopped", 10, "stopped")
    aws.client.faults(capacity=[{"az": "us-east-1a", "instance_type": "t3.medium"}])
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        aws.ec2.start_instances(InstanceIds=[iid])
    assert refused.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    assert state(aws, iid) == "stopped"
    aws.client.faults(clear_capacity=True, start_lag_s=0.5)
    aws.ec2.start_instances(InstanceIds=[iid])
    assert state(aws, iid) == "stopped"  # EC2's answer lags behind the start
    wait_until(lambda: state(aws, iid) == "running", 10, "running after the lag")


def test_reboot_emits_an_event(aws):
    iid = run(aws)
    after = aws.client.events(0)["last"]
    aws.ec2.reboot_instances(InstanceIds=[iid])
    events = aws.client.events(after, timeout=5)["events"]
    assert [(e["instance_id"], e["state"]) for e in events] == [(iid, "rebooting")]
    assert state(aws, iid) == "running"


def test_a_just_launched_instance_is_not_found_until_visible(aws):
    aws.client.faults(visibility_lag_s=1.0)
    iid = run(aws, "young")
    assert iid not in {i["InstanceId"] for r in aws.ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    for call in (lambda: aws.ec2.describe_instances(InstanceIds=[iid]),
                 lambda: aws.ec2.terminate_instances(InstanceIds=[iid])):
        with pytest.raises(botocore.exceptions.ClientError) as missing:
            call()
        assert missing.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
    wait_until(lambda: users_instances(aws, "young"), 10, "the instance to be listed")
    assert state(aws, iid) == "running"  # the refused terminate did nothing


def launch_tagged(aws, hub, count):
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "ec2hub:hub", "Value": hub}]}]
    answer = aws.ec2.run_instances(ImageId="ami-12345678", InstanceType="t3.medium", SubnetId=aws.subnet,
                                   MinCount=count, MaxCount=count, TagSpecifications=tags)
    return [i["InstanceId"] for i in answer["Instances"]]


def pages_of(aws, filters, page_size):
    """Every page of a filtered DescribeInstances, as lists of instance ids (one call per page)."""
    pages, token = [], None
    while True:
        answer = aws.ec2.describe_instances(Filters=filters, MaxResults=page_size, **({"NextToken": token} if token else {}))
        pages.append([i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"]])
        token = answer.get("NextToken")
        if not token:
            return pages


def test_tag_filtered_describe_is_paged_by_instances_as_ec2_pages(aws):
    # Two launches (7 and 5 instances, one reservation each) with another hub's launch between.
    first = launch_tagged(aws, "paging", 7)
    launch_tagged(aws, "paging-other", 3)
    second = launch_tagged(aws, "paging", 5)
    mine = [{"Name": "tag:ec2hub:hub", "Values": ["paging"]}]

    # MaxResults counts instances, not reservations: 12 instances in pages of 5 are 5, 5, 2, the
    # first reservation split where the first page ends; launch order, none twice, none missing.
    assert pages_of(aws, mine, 5) == [first[:5], first[5:] + second[:3], second[3:]]
    answer = aws.ec2.describe_instances(Filters=mine, MaxResults=5)
    assert [(r["ReservationId"], len(r["Instances"])) for r in answer["Reservations"]] == [
        (answer["Reservations"][0]["ReservationId"], 5)]
    # Exactly one page when it fits, and without MaxResults every match in one answer.
    assert pages_of(aws, mine, 12) == [first + second]
    whole = aws.ec2.describe_instances(Filters=mine)
    assert [i["InstanceId"] for r in whole["Reservations"] for i in r["Instances"]] == first + second
    assert "NextToken" not in whole
    # boto3's paginator walks the same pages.
    pages = aws.ec2.get_paginator("describe_instances").paginate(Filters=mine, PaginationConfig={"PageSize": 5})
    assert [sum(len(r["Instances"]) for r in p["Reservations"]) for p in pages] == [5, 5, 2]


def test_next_token_survives_the_instance_it_names_leaving_the_filter(aws):
    ids = launch_tagged(aws, "paging-stop", 8)
    running = [{"Name": "tag:ec2hub:hub", "Values": ["paging-stop"]}, {"Name": "instance-state-name", "Values": ["running"]}]
    page = aws.ec2.describe_instances(Filters=running, MaxResults=5)
    assert [i["InstanceId"] for r in page["Reservations"] for i in r["Instances"]] == ids[:5]
    aws.ec2.stop_instances(InstanceIds=[ids[4], ids[5]])  # the token's instance, and one of the next page
    wait_until(lambda: state(aws, ids[5]) == "stopped", 10, "stopped")
    rest = aws.ec2.describe_instances(Filters=running, MaxResults=5, NextToken=page["NextToken"])
    assert [i["InstanceId"] for r in rest["Reservations"] for i in r["Instances"]] == ids[6:]
    assert "NextToken" not in rest


@pytest.mark.parametrize(("params", "code"), [
    ({"MaxResults": 4}, "InvalidParameterValue"),
    ({"MaxResults": 1001}, "InvalidParameterValue"),
    ({"MaxResults": 5, "NextToken": "not-a-token"}, "InvalidNextToken"),
], ids=["below-5", "above-1000", "unknown-token"])
def test_describe_refuses_what_ec2_refuses(aws, params, code):
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        aws.ec2.describe_instances(Filters=[{"Name": "tag:ec2hub:hub", "Values": ["paging"]}], **params)
    assert refused.value.response["Error"]["Code"] == code
