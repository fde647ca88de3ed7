"""EC2Spawner against the AWS emulator: start, adopt, state, fallback, throttling, cleanup, stop."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from ec2spawner.aws import Aws
from jupyterhub.spawner import SpawnException
from spawner_testing import AZS, TOKEN
from waiting import until


def tags_of(instance: dict) -> dict:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


async def test_start_launches_tagged_instance_and_writes_secret(new_spawner, hub_id, live, ssm, ec2, platform):
    spawner = new_spawner()
    url = await spawner.start()

    [instance] = live("alice")
    assert url == f"http://{instance['PrivateIpAddress']}:8888"
    assert instance["State"]["Name"] == "running"
    assert instance["InstanceType"] == "t3.medium"
    assert instance["Placement"]["AvailabilityZone"] == AZS[0]
    tags = tags_of(instance)
    assert tags["ec2hub:efs-access-point"].startswith("fsap-")  # test_spawner_homes.py: which one
    assert {k: v for k, v in tags.items() if not k.startswith("aws:")} == {
        "ec2hub:hub": hub_id, "ec2hub:user": "alice", "ec2hub:server": "", "ec2hub:class": "small",
        "ec2hub:secret-prefix": f"/ec2hub/{hub_id}/servers/", "ec2hub:efs": platform.efs_id,
        "ec2hub:efs-access-point": tags["ec2hub:efs-access-point"], "Name": f"ec2hub-{hub_id}-alice",
    }
    iid = instance["InstanceId"]
    name = f"/ec2hub/{hub_id}/servers/{iid}"
    env = json.loads(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
    assert env["JUPYTERHUB_API_TOKEN"] == TOKEN
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:8888/user/alice/"
    assert env["JUPYTERHUB_API_URL"] == "http://10.0.0.5:8081/hub/api"
    assert "PATH" not in env
    param_tags = {t["Key"]: t["Value"] for t in ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)["TagList"]}
    assert param_tags == {"ec2hub:hub": hub_id, "ec2hub:instance-arn": f"arn:aws:ec2:us-east-1:123456789012:instance/{iid}"}
    assert spawner.get_state() == {
        "instance_id": iid, "instance_class": "small", "subnet_id": instance["SubnetId"],
        "template_version": "1", "attempt": spawner.attempt,
    }
    assert await spawner.poll() is None


async def test_token_never_in_user_data_tags_or_logs(new_spawner, monkeypatch, ec2, caplog):
    sent = []
    invoke = Aws._invoke

    def recording(self, service, operation, params):
        sent.append((operation, params))
        return invoke(self, service, operation, params)

    monkeypatch.setattr(Aws, "_invoke", recording)
    caplog.set_level("DEBUG")
    spawner = new_spawner()
    await spawner.start()
    await spawner.stop()

    assert [op for op, params in sent if TOKEN in repr(params)] == ["PutParameter"]
    [run] = [params for op, params in sent if op == "RunInstances"]
    assert "UserData" not in run and "UserData" not in run["LaunchTemplate"]
    terminated = next(p for op, p in sent if op == "TerminateInstances")["InstanceIds"][0]
    attr = ec2.describe_instance_attribute(InstanceId=terminated, Attribute="userData")
    assert TOKEN not in json.dumps(attr, default=str)
    # botocore's own DEBUG log prints request bodies (the hub must never run botocore at DEBUG);
    # everything ec2spawner and the hub log must be free of the token.
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith(("botocore", "boto3", "urllib3"))]
    assert ours and not [m for m in ours if TOKEN in m]


async def test_second_start_adopts_instance_after_hub_died_mid_start(new_spawner, emu, live):
    emu.set_timing(pending_s=2)
    first = new_spawner()

    first._begin_abandon = lambda: None  # a hub killed mid-start runs no cleanup at all
    task = asyncio.create_task(first.start())
    await until(lambda: first.instance_id)
    launched = first.instance_id
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    second = new_spawner()  # the restarted hub's spawner: no state
    url = await second.start()
    events = [e["message"] for e in second._events]
    assert second.instance_id == launched
    assert [i["InstanceId"] for i in live("alice")] == [launched]
    assert any("Adopting" in m for m in events)
    assert url.endswith(":8888")


async def test_state_round_trip_recovers_after_hub_restart(new_spawner, emu):
    spawner = new_spawner()
    url = await spawner.start()
    state = spawner.get_state()

    restarted = new_spawner()
    restarted.load_state(state)
    assert restarted.get_state() == state
    assert await restarted.poll() is None
    # As JupyterHub's Server.url spells it (host, then base_url): its start-up check compares them.
    assert await restarted.get_url() == url + restarted.server.base_url
    restarted.clear_state()
    assert restarted.get_state() == {}
    assert await restarted.poll() == 0


async def test_capacity_falls_back_to_next_az_then_next_type(new_spawner, emu, live):
    emu.add_capacity_fault(AZS[0], "t3.medium")
    first = new_spawner("anne")
    await first.start()
    [a] = live("anne")
    assert (a["InstanceType"], a["Placement"]["AvailabilityZone"]) == ("t3.medium", AZS[1])

    for az in AZS:
        emu.add_capacity_fault(az, "t3.medium")
    second = new_spawner("bob")
    await second.start()
    [b] = live("bob")
    assert b["InstanceType"] == "t3a.medium"
    messages = [e["message"] for e in second._events]
    # bob tries the emptiest AZs first: anne's instance makes AZS[1] the last choice.
    assert [m for m in messages if m.startswith(("No capacity", "Requesting"))] == [
        f"Requesting t3.medium in {AZS[0]}", f"No capacity for t3.medium in {AZS[0]} (InsufficientInstanceCapacity)",
        f"Requesting t3.medium in {AZS[2]}", f"No capacity for t3.medium in {AZS[2]} (InsufficientInstanceCapacity)",
        f"Requesting t3.medium in {AZS[1]}", f"No capacity for t3.medium in {AZS[1]} (InsufficientInstanceCapacity)",
        f"Requesting t3a.medium in {AZS[0]}",
    ]


async def test_no_capacity_anywhere_is_a_clear_error_and_leaves_nothing(new_spawner, emu, live, hub_secrets):
    for az in AZS:
        for itype in ("t3.medium", "t3a.medium"):
            emu.add_capacity_fault(az, itype)
    spawner = new_spawner()
    with pytest.raises(SpawnException) as info:
        await spawner.start()
    assert info.value.reason == "capacity"
    assert "EC2 has no capacity for class 'Small CPU' right now" in info.value.message
    assert "t3a.medium in us-east-1c" in info.value.message
    assert live() == [] and hub_secrets() == []


async def test_many_concurrent_starts_are_queued_not_failed(new_spawner, emu, live):
    emu.set_throttle(5, 2.0)
    before = emu.counters.get("RequestLimitExceeded", 0)
    spawners = [new_spawner(f"user{i}") for i in range(12)]
    results = await asyncio.gather(*(s.start() for s in spawners), return_exceptions=True)
    # Queued, not failed: every start succeeds and EC2's bucket never refuses one. How long the
    # queue takes is a speed figure (benchmarks/spawn_burst.py), not a test outcome.
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert len(live()) == 12
    assert emu.counters.get("RequestLimitExceeded", 0) - before == 0


@pytest.mark.parametrize("how", ["start_timeout", "cancelled_by_hub"])
async def test_timeout_leaves_no_instance_and_no_secret(new_spawner, emu, live, hub_secrets, how):
    emu.set_timing(pending_s=30)
    if how == "start_timeout":
        spawner = new_spawner(start_timeout=1)
        with pytest.raises(asyncio.TimeoutError):
            await spawner.start()
    else:  # JupyterHub wraps start() in asyncio.wait_for(start_timeout) and cancels it
        spawner = new_spawner()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(spawner.start(), timeout=1)
    assert spawner.instance_id is None
    # What the hub does next (User.spawn after a timeout): stop(), which waits for the cleanup a
    # cancelled start leaves running; nothing of the start is left after it.
    await spawner.stop()
    assert live() == []
    assert hub_secrets() == []


async def test_stop_twice_is_idempotent(new_spawner, live, hub_secrets, ec2):
    spawner = new_spawner()
    await spawner.start()
    iid = spawner.instance_id
    await spawner.stop()
    spawner.instance_id = iid  # a stop retried with stale state
    await spawner.stop()
    assert live() == [] and hub_secrets() == []
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated"
    assert await spawner.poll() == 0


async def test_stop_waits_boundedly(new_spawner, emu):
    emu.set_timing(shutting_down_s=30)
    spawner = new_spawner(stop_timeout=0.5)
    await spawner.start()
    started = time.monotonic()
    await spawner.stop()
    assert time.monotonic() - started < 3


async def test_poll_sees_termination_behind_the_hubs_back(new_spawner, emu, hub_secrets):
    spawner = new_spawner()
    await spawner.start()
    emu.terminate(spawner.instance_id)
    watcher = spawner._watcher()
    await watcher.fresh()
    assert await spawner.poll() == 1
    assert hub_secrets() == []


async def test_spot_interruption_while_pending_tells_the_user(new_spawner, emu, live, hub_secrets):
    # The instance stays pending until the interruption, however slow the machine: a timed
    # pending period could end first and let the start finish before the terminate.
    hold = emu.hold("pending", "ec2hub:user=alice")
    try:
        spawner = new_spawner(user_options={"instance_class": "spot"})
        task = asyncio.create_task(spawner.start())
        await until(lambda: spawner.instance_id and spawner._watcher().get(spawner.instance_id))
        emu.terminate(spawner.instance_id, spot=True)
        with pytest.raises(SpawnException) as info:
            await task
    finally:
        emu.release(hold.id)
    assert info.value.reason == "spot-interruption"
    assert "spot interruption" in info.value.message
    assert live() == [] and hub_secrets() == []


async def test_named_servers_get_their_own_instances(new_spawner, live, hub_id):
    default = new_spawner()
    named = new_spawner(server="training", groups=["gpu"], user_options={"instance_class": "gpu"})
    await asyncio.gather(default.start(), named.start())
    by_server = {tags_of(i)["ec2hub:server"]: i for i in live("alice")}
    assert set(by_server) == {"", "training"}
    assert tags_of(by_server["training"])["Name"] == f"ec2hub-{hub_id}-alice-training"
    assert by_server["training"]["InstanceType"] == "g5.xlarge"
    await named.stop()
    assert [tags_of(i)["ec2hub:server"] for i in live("alice")] == [""]


async def test_stop_mode_stop_resumes_same_instance(new_spawner, live, hub_secrets):
    first = new_spawner(stop_mode="stop")
    await first.start()
    iid = first.instance_id
    await first.stop()
    assert [(i["InstanceId"], i["State"]["Name"]) for i in live()] == [(iid, "stopped")]
    assert hub_secrets() == []

    again = new_spawner(stop_mode="stop")
    await again.start()
    assert again.instance_id == iid
    assert [i["State"]["Name"] for i in live()] == ["running"]
    assert len(hub_secrets()) == 1


async def test_stop_mode_replaces_instance_when_template_changed(new_spawner, live, ec2, platform):
    lt = platform.classes[0]["launch_template_id"]
    first = new_spawner(stop_mode="stop")
    await first.start()
    old = first.instance_id
    await first.stop()
    version = ec2.create_launch_template_version(
        LaunchTemplateId=lt, SourceVersion="1", LaunchTemplateData={"InstanceType": "t3.medium"}
    )["LaunchTemplateVersion"]["VersionNumber"]
    ec2.modify_launch_template(LaunchTemplateId=lt, DefaultVersion=str(version))
    try:
        again = new_spawner(stop_mode="stop")
        await again.start()
        assert again.instance_id != old
        assert [i["InstanceId"] for i in live()] == [again.instance_id]
        assert any("changed since" in e["message"] for e in again._events)
    finally:
        ec2.modify_launch_template(LaunchTemplateId=lt, DefaultVersion="1")


async def test_progress_reports_real_phases(new_spawner, emu, platform):
    emu.set_timing(pending_s=0.5)
    spawner = new_spawner()
    messages = []

    async def follow():  # subscribed before start() runs, as the hub's progress page may be
        async for event in spawner.progress():
            messages.append(event["message"])

    follower = asyncio.create_task(follow())
    await spawner.start()
    await asyncio.wait_for(follower, 5)
    iid, ip = spawner.instance_id, spawner._watcher().get(spawner.instance_id).private_ip
    assert messages == [
        f"Creating your home directory's access point on {platform.efs_id}",  # the user's first start
        f"Requesting t3.medium in {AZS[0]}",
        f"Instance {iid} pending (t3.medium in {AZS[0]})",
        f"Running at {ip}, booting",
        "Waiting for the notebook server",
    ]


async def test_one_describe_serves_every_poll(new_spawner, emu):
    spawners = [new_spawner(f"p{i}") for i in range(5)]
    await asyncio.gather(*(s.start() for s in spawners))
    aws = Aws.for_region("us-east-1")
    before = aws.calls.get("DescribeInstances", 0)
    for _ in range(3):
        assert await asyncio.gather(*(s.poll() for s in spawners)) == [None] * 5
    assert aws.calls.get("DescribeInstances", 0) - before <= 1


async def test_just_launched_instance_not_yet_listed_counts_as_pending(new_spawner, emu, monkeypatch):
    spawner = new_spawner(launch_visibility_grace=1)
    await spawner.start()
    watcher = spawner._watcher()
    iid = spawner.instance_id
    real = Aws._describe_all_sync

    def invisible(self, filters):  # EC2's eventual consistency: not listed yet
        views = real(self, filters)
        views.pop(iid, None)
        return views

    monkeypatch.setattr(Aws, "_describe_all_sync", invisible)
    watcher.expect(watcher.snapshot[iid])
    await watcher.fresh()
    assert await spawner.poll() is None
    # Unlisted for longer than the grace: gone. Each poll sees the watcher's latest snapshot.
    assert await until(spawner.poll, timeout=10) == 1


async def test_poll_never_reports_a_server_dead_while_ec2_is_unreachable(new_spawner, emu, monkeypatch, hub_secrets):
    import botocore.exceptions
    from ec2spawner.watcher import InstanceWatcher

    spawner = new_spawner()
    await spawner.start()
    state = spawner.get_state()
    await InstanceWatcher.stop_all()  # the hub restarts: no watcher, no snapshot
    invoke, outage = Aws._invoke, {"on": True}

    def unreachable(self, service, operation, params):
        if outage["on"]:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=emu.endpoint_url)
        return invoke(self, service, operation, params)

    monkeypatch.setattr(Aws, "_invoke", unreachable)
    restarted = new_spawner()
    restarted.load_state(state)
    assert await restarted.poll() is None  # first poll: no snapshot, EC2 unreachable
    assert await restarted.poll() is None
    emu.terminate(state["instance_id"])  # ends during the outage; only EC2's answer may say so
    assert await restarted.poll() is None
    assert len(hub_secrets()) == 1
    outage["on"] = False
    assert await until(restarted.poll, timeout=10) == 1
    assert hub_secrets() == []  # JupyterHub calls no stop() after poll() reported an exit


async def test_poll_terminates_an_instance_stopped_behind_the_hubs_back(new_spawner, emu, ec2, live, hub_secrets):
    spawner = new_spawner()  # stop_mode=terminate: a stopped instance is not kept
    await spawner.start()
    ec2.stop_instances(InstanceIds=[spawner.instance_id])
    await spawner._watcher().fresh()
    assert await spawner.poll() == 0
    assert live() == [] and hub_secrets() == []


async def test_delete_forever_removes_a_kept_stopped_instance(new_spawner, live):
    spawner = new_spawner(stop_mode="stop")
    await spawner.start()
    await spawner.stop()
    assert [i["State"]["Name"] for i in live()] == ["stopped"]
    await spawner.delete_forever()
    assert live() == []


@pytest.mark.parametrize(
    ("code", "reason", "status", "message"),
    [
        ("VcpuLimitExceeded", "quota", 503,
         ("The AWS account has reached a limit for this instance class (VcpuLimitExceeded). "
          "Ask an administrator to raise the quota, or pick a smaller class.")),
        ("UnauthorizedOperation", "aws-permission", 500,
         "The hub is not allowed to start this instance; an administrator should check the hub's IAM role."),
        ("InternalError", "aws-error", 500,
         "AWS refused to start the server: InternalError. An administrator can find the details in the hub log."),
    ],
)
async def test_aws_refusals_become_messages_a_user_understands(new_spawner, monkeypatch, live, code, reason,
                                                                status, message):
    import botocore.exceptions

    invoke = Aws._invoke

    def refusing(self, service, operation, params):  # the one fault-injection seam
        if operation == "RunInstances":
            raise botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "no"}}, operation)
        return invoke(self, service, operation, params)

    monkeypatch.setattr(Aws, "_invoke", refusing)
    spawner = new_spawner()
    with pytest.raises(SpawnException) as info:
        await spawner.start()
    assert (info.value.reason, info.value.status_code, info.value.message) == (reason, status, message)
    assert info.value.log_message == f"RunInstances: {code}: no"
    assert spawner._events[-1]["message"] == f"Start failed: {message}"
    assert live() == []


async def test_full_subnet_moves_the_launch_to_the_next_az(new_spawner, monkeypatch, live, platform):
    import botocore.exceptions

    full = platform.subnets[AZS[0]]
    invoke = Aws._invoke

    def full_subnet(self, service, operation, params):
        if operation == "RunInstances" and params["SubnetId"] == full:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "InsufficientFreeAddressesInSubnet", "Message": "no free address"}}, operation)
        return invoke(self, service, operation, params)

    monkeypatch.setattr(Aws, "_invoke", full_subnet)
    spawner = new_spawner()
    await spawner.start()
    [instance] = live("alice")
    assert instance["Placement"]["AvailabilityZone"] == AZS[1]
    assert f"No capacity for t3.medium in {AZS[0]} (InsufficientFreeAddressesInSubnet)" in [
        e["message"] for e in spawner._events]
