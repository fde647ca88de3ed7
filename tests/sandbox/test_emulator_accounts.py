"""Accounts in the emulator, told by credentials as AWS tells them (sandbox/emulator.py
``_use_default_account``): the sandbox's own key is the hub's account A; a role assumed in account B acts
in B, where nothing of A is seen and nothing of B is seen from A. The two-account sandbox rests on
it (tests/e2e/test_accounts.py deploys the target stack and launches there)."""

from __future__ import annotations

import uuid

import boto3
import pytest

from sandbox.emulator import start_emulator
from sandbox.runner import (
    ACCOUNT,
    REGION,
    TARGET_ACCOUNT,
    TARGET_CIDR,
    TARGET_REGION,
    account_session,
)


@pytest.fixture(scope="module")
def emulator():
    mp = pytest.MonkeyPatch()
    mp.delenv("MOTO_ACCOUNT_ID", raising=False)
    em = start_emulator(0, default_account=ACCOUNT)
    yield em
    em.stop()
    mp.undo()


def own(emulator, name: str, region: str = REGION):
    """A client with the sandbox's own key (no key moto issued)."""
    return boto3.client(name, region_name=region, endpoint_url=emulator.endpoint_url,
                        aws_access_key_id="sandbox", aws_secret_access_key="sandbox")


def test_the_sandbox_key_is_the_hubs_account_and_an_assumed_role_its_roles(emulator):
    assert own(emulator, "sts").get_caller_identity()["Account"] == ACCOUNT
    b = account_session(emulator.endpoint_url, TARGET_ACCOUNT, TARGET_REGION)
    assert b.client("sts", endpoint_url=emulator.endpoint_url).get_caller_identity()["Account"] == TARGET_ACCOUNT


def test_what_b_makes_and_launches_stays_in_b(emulator):
    """A VPC and launch template made by B's deployer; an instance launched from that template
    with credentials the hub's key got by assuming B's role (as ec2spawner.aws.AssumedRole does)."""
    b = account_session(emulator.endpoint_url, TARGET_ACCOUNT, TARGET_REGION).client(
        "ec2", endpoint_url=emulator.endpoint_url)
    vpc = b.create_vpc(CidrBlock=TARGET_CIDR)["Vpc"]["VpcId"]
    subnet = b.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24", AvailabilityZone=f"{TARGET_REGION}a")["Subnet"]
    # moto's state is per process, not per emulator: a name of its own, and removed after, so that
    # the spawner suites' emulator later in this process (its own template "research" in B) is unaffected.
    name = f"research-{uuid.uuid4().hex[:8]}"
    template = b.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": "ami-12345678", "InstanceType": "t3.medium"})["LaunchTemplate"]["LaunchTemplateId"]
    creds = own(emulator, "sts").assume_role(RoleArn=f"arn:aws:iam::{TARGET_ACCOUNT}:role/ec2hub-research",
                                             RoleSessionName="ec2hub-ec2hub", ExternalId="ec2hub-research")["Credentials"]
    assumed = boto3.client("ec2", region_name=TARGET_REGION, endpoint_url=emulator.endpoint_url,
                           aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                           aws_session_token=creds["SessionToken"])
    [launched] = assumed.run_instances(LaunchTemplate={"LaunchTemplateId": template}, SubnetId=subnet["SubnetId"],
                                       MinCount=1, MaxCount=1)["Instances"]
    try:
        [seen] = [i for r in b.describe_instances()["Reservations"] for i in r["Instances"]]
        assert seen["InstanceId"] == launched["InstanceId"] and seen["SubnetId"] == subnet["SubnetId"]
        for region in (REGION, TARGET_REGION):  # account A, in either region, has none of it
            a = own(emulator, "ec2", region)
            assert a.describe_instances()["Reservations"] == []
            assert a.describe_vpcs(Filters=[{"Name": "cidr", "Values": [TARGET_CIDR]}])["Vpcs"] == []
            assert a.describe_launch_templates(
                Filters=[{"Name": "launch-template-name", "Values": [name]}])["LaunchTemplates"] == []
    finally:
        assumed.terminate_instances(InstanceIds=[launched["InstanceId"]])
        b.delete_launch_template(LaunchTemplateId=template)


def test_a_default_account_refuses_moto_account_id(monkeypatch):
    """MOTO_ACCOUNT_ID would put every call, an assumed role's too, in one account."""
    monkeypatch.setenv("MOTO_ACCOUNT_ID", ACCOUNT)
    with pytest.raises(RuntimeError, match="MOTO_ACCOUNT_ID puts every call in one account"):
        start_emulator(0, default_account=ACCOUNT)
