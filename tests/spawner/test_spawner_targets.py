"""Classes that launch in another account and region (a catalog ``target``), against the emulator.

moto keeps separate state per account and answers AssumeRole with credentials of the account the
role ARN names (moto/sts/models.py ``_create_access_key``: the account id is parsed from the ARN,
and the temporary key is stored in that account's IAM backend, which is how later calls with it
are attributed: moto/iam/models.py ``get_account_id_from``). The hub's own credentials are account
123456789012 (moto's default) in us-east-1; the target is account 222222222222 in eu-central-1.

moto does not enforce IAM, so "the hub cannot launch in B without the assumed role" is proven on
the target stack's template (tests/infra/test_infra_target.py: its role trusts only the hub's
role, with the external id); here the hub's own seam simply reaches account A, where B's template
and instances do not exist.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import boto3
import pytest
from ec2spawner.aws import AssumedRole, Aws
from ec2spawner.payloads import instance_tags
from ec2spawner.spawner import EC2Spawner
from ec2spawner.watcher import InstanceWatcher
from jupyterhub.spawner import SpawnException
from spawner_testing import REGION, live_instances
from waiting import until

ACCOUNT_A = "123456789012"
ACCOUNT_B = "222222222222"
REGION_B = "eu-central-1"
AZS_B = ["eu-central-1a", "eu-central-1b"]
ROLE_B = f"arn:aws:iam::{ACCOUNT_B}:role/ec2hub-research"
ACCOUNT_C = "333333333333"
EXTERNAL_ID = "ec2hub-research-7f3a"


def make_target(emulator, *, name, account, region, azs, cidr):
    """An account as its target stack leaves it: a VPC with a subnet per AZ and the class's template."""
    sts = boto3.client("sts", region_name=REGION, endpoint_url=emulator.endpoint_url)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/ec2hub-{name}", RoleSessionName="test-setup",
                            ExternalId=EXTERNAL_ID)["Credentials"]
    session = boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                            aws_session_token=creds["SessionToken"], region_name=region)
    ec2 = session.client("ec2", endpoint_url=emulator.endpoint_url)
    ssm = session.client("ssm", endpoint_url=emulator.endpoint_url)
    vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    subnets = {az: ec2.create_subnet(VpcId=vpc, CidrBlock=cidr.replace(".0.0/16", f".{i + 1}.0/24"),
                                     AvailabilityZone=az)["Subnet"]["SubnetId"] for i, az in enumerate(azs)}
    template = ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": "ami-12345678", "InstanceType": "t3.medium",
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}})["LaunchTemplate"]
    cls = {"slug": name, "display_name": f"{name} (account {account})", "instance_types": ["t3.medium", "t3a.medium"],
           "ami": "ami-12345678", "target": name, "hourly_cost_usd": 0.05, "allowed_groups": ["research"],
           "launch_template_id": template["LaunchTemplateId"]}
    settings = {"account": account, "region": region, "role_arn": f"arn:aws:iam::{account}:role/ec2hub-{name}",
                "external_id": EXTERNAL_ID, "subnets": subnets}
    return SimpleNamespace(ec2=ec2, ssm=ssm, subnets=subnets, cls=cls, vpc=vpc, settings=settings)


@pytest.fixture(scope="session")
def target_b(emulator):
    """Account B in another region: the class ``research``."""
    return make_target(emulator, name="research", account=ACCOUNT_B, region=REGION_B, azs=AZS_B, cidr="10.1.0.0/16")


@pytest.fixture(scope="session")
def target_c(emulator):
    """Account C in the hub's own region: the class ``lab`` (a watcher per account, not per region)."""
    return make_target(emulator, name="lab", account=ACCOUNT_C, region=REGION, azs=["us-east-1a"], cidr="10.2.0.0/16")


@pytest.fixture
def b_spawner(new_spawner, platform, target_b, target_c, hub_id):
    """A spawner factory whose hub has the targets ``research`` (B) and ``lab`` (C) and their classes."""
    targets = {"research": {**target_b.settings, "secret_prefix": f"/ec2hub/{hub_id}/b-servers/"},
               "lab": {**target_c.settings, "secret_prefix": f"/ec2hub/{hub_id}/servers/"}}

    def factory(user="bob", *, research=True, groups=("research",), cls="research", **traits):
        """A spawner of a member of ``groups`` (the research group may use the classes in B and C)
        whose options pick ``cls`` (with ``research``; else the hub's default class)."""
        options = {"instance_class": cls} if research else {}
        return new_spawner(user, groups=groups, classes=[*platform.classes, target_b.cls, target_c.cls],
                           targets=targets, user_options=options, **traits)

    return factory


def b_secrets(target_b, hub_id) -> list[str]:
    found = target_b.ssm.describe_parameters(
        ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [f"/ec2hub/{hub_id}/"]}])
    return [p["Name"] for p in found["Parameters"]]


async def test_a_class_that_targets_account_b_launches_there_and_nothing_in_the_hubs_account(
        b_spawner, target_b, hub_id, live, hub_secrets):
    # The user's group decides: outside it, the class in B is refused before anything launches.
    with pytest.raises(SpawnException) as refused:
        await b_spawner("mallory", groups=()).start()
    assert refused.value.status_code == 403 and live_instances(target_b.ec2, hub_id) == []
    spawner = b_spawner("bob")
    await spawner.start()
    iid = spawner.instance_id
    [instance] = live_instances(target_b.ec2, hub_id, "bob")
    assert instance["InstanceId"] == iid
    assert instance["SubnetId"] in target_b.subnets.values()
    assert instance["Placement"]["AvailabilityZone"] in AZS_B
    assert live("bob") == []  # account A, the hub's own: nothing
    # Its secret is in B, under B's prefix, readable there only by this instance (its tag names it).
    assert b_secrets(target_b, hub_id) == [f"/ec2hub/{hub_id}/b-servers/{iid}"]
    assert hub_secrets() == []
    tags = target_b.ssm.list_tags_for_resource(ResourceType="Parameter",
                                               ResourceId=f"/ec2hub/{hub_id}/b-servers/{iid}")["TagList"]
    assert {"Key": "ec2hub:instance-arn",
            "Value": f"arn:aws:ec2:{REGION_B}:{ACCOUNT_B}:instance/{iid}"} in tags
    assert spawner.get_state()["target"] == "research"
    await spawner.stop()
    assert live_instances(target_b.ec2, hub_id) == [] and b_secrets(target_b, hub_id) == []


async def test_the_hubs_own_credentials_do_not_reach_account_b(b_spawner, target_b):
    # Without the assumed role the hub's calls go to its own account, where B's template is unknown.
    own = await Aws.for_region(REGION_B).call("ec2", "DescribeLaunchTemplates")
    assert target_b.cls["launch_template_id"] not in [t["LaunchTemplateId"] for t in own["LaunchTemplates"]]
    assert (await b_spawner().aws_of("research").call("sts", "GetCallerIdentity"))["Account"] == ACCOUNT_B
    assert (await Aws.for_region(REGION).call("sts", "GetCallerIdentity"))["Account"] == ACCOUNT_A


async def test_a_hub_restart_finds_the_b_server_from_its_state_and_old_states_mean_the_hubs_own(
        b_spawner, target_b, hub_id):
    first = b_spawner("carol")
    await first.start()
    state = first.get_state()
    await InstanceWatcher.stop_all()  # the old hub process is gone, and its view of EC2 with it

    after = b_spawner("carol", research=False)  # a restarted hub: a new spawner, only the saved state
    after.load_state(state)
    assert after.target == "research" and after.aws.key == f"{ROLE_B}@{REGION_B}"
    assert await after.poll() is None  # running, found in B
    await after.stop()
    assert live_instances(target_b.ec2, hub_id, "carol") == []

    old = b_spawner("dave", research=False)
    old.load_state({"instance_id": "i-0123456789abcdef0", "instance_class": "small"})  # saved before targets
    assert old.target is None and old.aws is Aws.for_region(REGION)


async def test_an_orphan_in_b_is_swept_by_bs_own_sweeper(b_spawner, target_b, hub_id, live):
    from jupyterhub import orm

    orphan = target_b.ec2.run_instances(
        ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.medium", SubnetId=target_b.subnets[AZS_B[0]],
        TagSpecifications=[{"ResourceType": "instance", "Tags": instance_tags(
            hub_id=hub_id, user="ghost", server="", class_slug="research",
            secret_prefix=f"/ec2hub/{hub_id}/b-servers/", efs_id=None)}])["Instances"][0]["InstanceId"]
    target_b.ssm.put_parameter(Name=f"/ec2hub/{hub_id}/b-servers/{orphan}", Type="SecureString", Value="{}")
    hub = b_spawner()
    config = hub.config
    for trait in ("hub_id", "region", "classes", "subnets", "secret_prefix", "targets"):
        setattr(config.EC2Spawner, trait, getattr(hub, trait))
    config.EC2Spawner.sweep_orphans, config.EC2Spawner.orphan_grace = True, 0
    db = orm.new_session_factory("sqlite://")()
    own, c, b = EC2Spawner.start_sweeper(config=config, db=db, log=logging.getLogger("test"))  # own, then by name
    assert (own.aws.key, c.aws.key, b.aws.key) == (
        REGION, f"arn:aws:iam::{ACCOUNT_C}:role/ec2hub-lab@{REGION}", f"{ROLE_B}@{REGION_B}")
    assert b.secret_prefix == f"/ec2hub/{hub_id}/b-servers/"
    # Each sweeper's first sweep runs as it starts (with the hub): B's ends the orphan in B.
    await until(lambda: not live_instances(target_b.ec2, hub_id) and not b_secrets(target_b, hub_id),
                timeout=30, what="the orphan in B and its secret swept")
    assert target_b.ec2.describe_instances(InstanceIds=[orphan])["Reservations"][0]["Instances"][0][
        "State"]["Name"] in ("shutting-down", "terminated")


async def test_the_watchers_describe_once_per_target_per_cycle(b_spawner, target_b, target_c, hub_id):
    started = ([b_spawner(f"b{i}") for i in range(3)] + [b_spawner(f"a{i}", research=False) for i in range(2)]
               + [b_spawner("c0", cls="lab")])
    await asyncio.gather(*(s.start() for s in started))
    assert [i["InstanceId"] for i in live_instances(target_c.ec2, hub_id)] == [started[-1].instance_id]
    await InstanceWatcher.stop_all()
    # A restarted hub whose background refresh is an hour away: every describe below is a cycle's.
    servers = []
    for old in started:
        new = b_spawner(old.user.name, research=old.target is not None, cls=old.instance_class, poll_interval=3600)
        new.load_state(old.get_state())
        servers.append(new)
    in_b, in_a, in_c = servers[:3], servers[3:5], servers[5:]
    own, b, c = in_a[0]._watcher(), in_b[0]._watcher(), in_c[0]._watcher()
    assert len({own, b, c}) == 3  # C is in the hub's region but another account: a watcher of its own
    assert {s._watcher() for s in in_b} == {b} and {s._watcher() for s in in_a} == {own}
    assert (own.aws.key, b.aws.key, c.aws.key) == (REGION, f"{ROLE_B}@{REGION_B}",
                                                   f"arn:aws:iam::{ACCOUNT_C}:role/ec2hub-lab@{REGION}")
    assert all(status is None for status in await asyncio.gather(*(s.poll() for s in servers)))  # first: a refresh
    before = {w: (w.aws.calls["DescribeInstances"], w.refreshes) for w in (own, b, c)}
    for _ in range(3):  # three cycles of JupyterHub polling every server
        await asyncio.gather(own.refresh(), b.refresh(), c.refresh())
        assert all(status is None for status in await asyncio.gather(*(s.poll() for s in servers)))
    for w in (own, b, c):
        # One describe (one page here) per cycle in each account, however many servers it has.
        assert (w.aws.calls["DescribeInstances"] - before[w][0], w.refreshes - before[w][1]) == (3, 3)
    assert (len(b.snapshot), len(own.snapshot), len(c.snapshot)) == (3, 2, 1)
    await asyncio.gather(*(s.stop(now=True) for s in servers))


async def test_no_capacity_in_bs_first_az_falls_back_to_its_next(b_spawner, emu, target_b, hub_id):
    emu.add_capacity_fault(AZS_B[0], "t3.medium")
    emu.add_capacity_fault(AZS_B[1], "t3.medium")
    spawner = b_spawner("erin")
    await spawner.start()
    [instance] = live_instances(target_b.ec2, hub_id, "erin")
    assert instance["InstanceType"] == "t3a.medium" and instance["SubnetId"] == target_b.subnets[AZS_B[0]]
    await spawner.stop(now=True)


async def test_a_start_in_b_that_times_out_leaves_nothing_in_b(b_spawner, emu, target_b, hub_id):
    emu.set_timing(pending_s=30)
    spawner = b_spawner("frank", start_timeout=1)
    with pytest.raises(asyncio.TimeoutError):
        await spawner.start()
    await spawner.stop()
    assert live_instances(target_b.ec2, hub_id, "frank") == [] and b_secrets(target_b, hub_id) == []


async def test_a_kept_instance_in_b_goes_when_the_server_moves_to_the_hubs_account(b_spawner, target_b, hub_id, live):
    spawner = b_spawner("gina", stop_mode="stop")
    await spawner.start()
    kept = spawner.instance_id
    await spawner.stop()
    spawner.clear_state()
    assert (spawner.kept_instance_id, spawner.target) == (kept, "research")  # survives, names B
    spawner.user_options = {"instance_class": "small"}
    await spawner.start()
    assert spawner.target is None and [i["InstanceId"] for i in live("gina")] == [spawner.instance_id]
    assert live_instances(target_b.ec2, hub_id, "gina") == [] and b_secrets(target_b, hub_id) == []
    await spawner.stop()


async def test_assumed_role_credentials_are_reused_while_fresh_and_refreshed_before_expiry(emulator):
    fresh = Aws(REGION_B, role=AssumedRole(ROLE_B, EXTERNAL_ID, duration_s=3600))
    await fresh.call("sts", "GetCallerIdentity")
    key = fresh.credentials.access_key
    await fresh.call("sts", "GetCallerIdentity")
    assert fresh.credentials.access_key == key  # an hour left: no AssumeRole again
    # 900 s (AWS's shortest) is inside botocore's 15-minute refresh window from the start: each
    # use refreshes, which is what an hour-long session does in its last quarter.
    expiring = Aws(REGION_B, role=AssumedRole(ROLE_B, EXTERNAL_ID, duration_s=900))
    keys = []
    for _ in range(2):
        answer = await expiring.call("sts", "GetCallerIdentity")
        assert answer["Account"] == ACCOUNT_B
        keys.append(expiring.credentials.access_key)
    assert keys[0] != keys[1] and all(k.startswith("ASIA") for k in keys)
    assert expiring.credentials.method == "ec2hub-assume-role"


def test_the_settings_document_carries_targets_to_the_spawner_and_refuses_an_unknown_one():
    from ec2spawner.hubconfig import apply_settings
    from ec2spawner.settings import HubSettings
    from traitlets.config import Config

    target = {"account": ACCOUNT_B, "region": REGION_B, "role_arn": ROLE_B, "external_id": EXTERNAL_ID,
              "subnets": {"eu-central-1a": "subnet-b1"}, "secret_prefix": "/ec2hub/hub1/servers/"}
    cls = {"slug": "research", "display_name": "R", "instance_types": ["t3.medium"], "ami": "ami-12345678",
           "default": True, "target": "research", "launch_template_id": "lt-0b"}
    document = {"region": REGION, "hub_id": "hub1", "subnets": {"us-east-1a": "subnet-a"}, "classes": [cls],
                "secret_prefix": "/ec2hub/hub1/servers/", "targets": {"research": target}}
    c = Config()
    apply_settings(c, HubSettings.model_validate(document), hub_connect_ip="10.0.0.5")
    assert c.EC2Spawner.targets == {"research": target}
    assert c.EC2Spawner.classes[0]["target"] == "research"
    with pytest.raises(ValueError, match="class 'research': target 'research' is not in targets"):
        HubSettings.model_validate({**document, "targets": {}})


async def test_spend_per_user_and_group_adds_up_every_account(b_spawner, table):
    # One ledger, in the hub's own account, whichever account the instance runs in.
    t0 = 1_781_049_600  # 2026-06-10 00:00 UTC
    clock = [t0]
    traits = {"spend_table": table, "spend_clock": lambda: clock[0], "use_price_list": False,
              "groups": ["lab", "research"]}
    in_b, in_a = b_spawner("hana", **traits), b_spawner("hana", server="cpu", research=False, **traits)
    await asyncio.gather(in_b.start(), in_a.start())
    clock[0] = t0 + 1800
    await asyncio.gather(in_b.stop(now=True), in_a.stop(now=True))
    spent = await in_a._ledger().spent(["user#hana", "group#lab"], "2026-06")
    # Half an hour each at the catalog's prices: research (B) 0.05 $/h, small (A) 0.0416 $/h.
    assert spent == {"user#hana": pytest.approx(0.025 + 0.0208), "group#lab": pytest.approx(0.025 + 0.0208)}
