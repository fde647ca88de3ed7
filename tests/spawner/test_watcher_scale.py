"""The watcher over more instances than one DescribeInstances page, against the emulator over HTTP
(which pages as EC2 does): every instance seen, ceil(N / page) calls per refresh, views parsed
from the fields they hold only, and unchanged instances keeping their view between refreshes."""

from __future__ import annotations

import math

from ec2spawner.aws import Aws, InstanceView
from ec2spawner.watcher import InstanceWatcher
from spawner_testing import REGION
from waiting import wait_until


def launch(ec2, platform, hub_id: str, count: int) -> list[str]:
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "ec2hub:hub", "Value": hub_id},
                                                  {"Key": "ec2hub:user", "Value": "someone"}]}]
    answer = ec2.run_instances(ImageId="ami-12345678", InstanceType="t3.medium", MinCount=count, MaxCount=count,
                               SubnetId=platform.subnets["us-east-1a"], TagSpecifications=tags)
    return [i["InstanceId"] for i in answer["Instances"]]


def running(ec2, ids: list[str]) -> None:
    """Wait out the emulator's pending period, after which nothing changes unless a test says so."""
    wait_until(lambda: all(i["State"]["Name"] == "running" for r in ec2.describe_instances(InstanceIds=ids)
                           ["Reservations"] for i in r["Instances"]), 10, "the instances running")


def paged_watcher(hub_id: str, page: int) -> InstanceWatcher:
    aws = Aws(REGION)
    aws.describe_page_size = page
    return InstanceWatcher(aws, hub_id)


async def test_watcher_over_several_pages_sees_every_instance_in_ceil_n_over_page_calls(ec2, platform, hub_id):
    ids = launch(ec2, platform, hub_id, 7) + launch(ec2, platform, hub_id, 5)  # 12, two reservations
    running(ec2, ids)  # so the watcher's answer and the full one below describe the same states
    watcher = paged_watcher(hub_id, page=5)
    for _ in range(2):
        before = watcher.aws.calls.get("DescribeInstances", 0)
        snapshot = await watcher.refresh()
        assert watcher.aws.calls["DescribeInstances"] - before == math.ceil(len(ids) / 5) == 3
        assert sorted(snapshot) == sorted(ids)
    # The views, parsed from their own fields only, are what a full parse of the same answer gives.
    full = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    assert {i["InstanceId"]: InstanceView.from_api(i, r["OwnerId"]) for r in full for i in r["Instances"]} == snapshot
    assert snapshot[ids[0]].tags == {"ec2hub:hub": hub_id, "ec2hub:user": "someone"}
    # Other callers of the seam still get EC2's whole answer.
    answer = await watcher.aws.call("ec2", "DescribeInstances", InstanceIds=ids[:1])
    assert answer["Reservations"][0]["Instances"][0]["ImageId"] == "ami-12345678"


async def test_a_refresh_keeps_the_view_of_every_instance_that_did_not_change(ec2, platform, hub_id):
    ids = launch(ec2, platform, hub_id, 6)
    running(ec2, ids)
    watcher = paged_watcher(hub_id, page=5)
    first = dict(await watcher.refresh())
    ec2.stop_instances(InstanceIds=[ids[0]])
    second = await watcher.refresh()
    assert all(second[i] is first[i] for i in ids[1:])  # nothing new to build, collect or free
    assert second[ids[0]] is not first[ids[0]] and second[ids[0]].state in ("stopping", "stopped")
