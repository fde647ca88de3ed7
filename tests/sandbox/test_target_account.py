"""A second account in the emulator: the target stack deployed into account B beside the hub's
account A, as `cdk deploy -c target=research` does (docs/DEPLOY.md, "Adding a target account").

The emulator tells accounts by credentials (sandbox/emulator.py): the sandbox's own key is the hub's
account A, a role assumed in B acts in B. The stack is the real CLI's synth of infra/target_stack.py.
"""

from __future__ import annotations

import json

import boto3
import pytest
from ec2spawner.catalog import load_catalog

from infra.target_stack import target_sites
from sandbox.emulator import start_emulator
from sandbox.runner import (
    ACCOUNT,
    REGION,
    TARGET,
    TARGET_ACCOUNT,
    TARGET_CIDR,
    TARGET_CLASS,
    TARGET_EXTERNAL_ID,
    TARGET_REGION,
    account_session,
    deploy_target,
    two_account_catalog,
)

HUB_CIDR = "10.0.0.0/16"


@pytest.fixture(scope="module")
def emulator():
    mp = pytest.MonkeyPatch()
    mp.delenv("MOTO_ACCOUNT_ID", raising=False)
    em = start_emulator(0, default_account=ACCOUNT)
    yield em
    em.stop()
    mp.undo()


@pytest.fixture(scope="module")
def hub_side(emulator):
    """The hub's account: its clients (the sandbox's own key) and the hub's role."""
    def client(name, region=REGION):
        return boto3.client(name, region_name=region, endpoint_url=emulator.endpoint_url,
                            aws_access_key_id="sandbox", aws_secret_access_key="sandbox")
    role = client("iam").create_role(RoleName="ec2hub-HubRole-SANDBOX", AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                 "Action": "sts:AssumeRole"}]}))["Role"]
    return client, role["Arn"]


@pytest.fixture(scope="module")
def deployed(emulator, hub_side, tmp_path_factory):
    _, hub_role_arn = hub_side
    out = tmp_path_factory.mktemp("target")
    catalog = two_account_catalog(out / "catalog.yaml")
    deployment, outputs = deploy_target(emulator.endpoint_url, out / "cdk.out", catalog=catalog,
                                        hub_role_arn=hub_role_arn, hub_cidr=HUB_CIDR)
    return deployment, outputs, catalog


def test_target_stack_is_created_in_account_b_and_nothing_in_a(emulator, hub_side, deployed):
    client, hub_role_arn = hub_side
    deployment, outputs, catalog = deployed
    b = account_session(emulator.endpoint_url, TARGET_ACCOUNT, TARGET_REGION)
    b_ec2, b_iam = b.client("ec2", endpoint_url=emulator.endpoint_url), b.client("iam", endpoint_url=emulator.endpoint_url)

    # The sandbox's own key is account A; B's deployer acts in B.
    assert client("sts").get_caller_identity()["Account"] == ACCOUNT
    assert b.client("sts", endpoint_url=emulator.endpoint_url).get_caller_identity()["Account"] == TARGET_ACCOUNT
    # As for the hub stack: only CDK's metadata and the custom resource that sets the template's
    # default version (a Lambda, which the emulator cannot run; the template has one version).
    assert sorted(kind for _, kind in deployment.not_created) == ["AWS::CDK::Metadata", "Custom::AWS"]
    assert any(logical.startswith(f"NotebooksClass{TARGET_CLASS.title()}DefaultVersion")
               for logical, _ in deployment.not_created)
    [vpc] = b_ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": [TARGET_CIDR]}])["Vpcs"]
    templates = json.loads(deployment.outputs["LaunchTemplates"])
    assert set(templates) == {TARGET_CLASS}
    [template] = b_ec2.describe_launch_templates(LaunchTemplateIds=[templates[TARGET_CLASS]])["LaunchTemplates"]
    subnets = json.loads(deployment.outputs["NotebookSubnets"])
    assert sorted(subnets) == [f"{TARGET_REGION}a", f"{TARGET_REGION}b"]
    assert {s["VpcId"] for s in b_ec2.describe_subnets(SubnetIds=list(subnets.values()))["Subnets"]} == {vpc["VpcId"]}

    # The role the hub assumes, in B, trusting the hub's role in A with the external id only.
    role = b_iam.get_role(RoleName=f"ec2hub-{TARGET}")["Role"]
    assert role["Arn"] == deployment.outputs["HubAccessRoleArn"] == f"arn:aws:iam::{TARGET_ACCOUNT}:role/ec2hub-{TARGET}"
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": hub_role_arn}
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": TARGET_EXTERNAL_ID}}

    # Account A (the sandbox's own key), in either region, has none of it.
    for region in (REGION, TARGET_REGION):
        a_ec2 = client("ec2", region)
        assert a_ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-id", "Values": [template["LaunchTemplateId"]]}])["LaunchTemplates"] == []
        assert a_ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": [TARGET_CIDR]}])["Vpcs"] == []
    with pytest.raises(client("iam").exceptions.NoSuchEntityException):
        client("iam").get_role(RoleName=f"ec2hub-{TARGET}")

    # What the hub stack reads of it (-c target_outputs=<the outputs file>).
    [site] = target_sites(load_catalog(catalog), outputs, hub_id="ec2hub").values()
    assert site.launch_template_ids == {TARGET_CLASS: template["LaunchTemplateId"]}
    assert site.cidr == TARGET_CIDR and site.settings["subnets"] == subnets


def test_the_hubs_assumed_role_launches_in_b_from_bs_template(emulator, hub_side, deployed):
    """The hub's credentials assume the target's role (as ec2spawner.aws.AssumedRole does); a
    RunInstances from B's launch template with them makes the instance in B, none in A."""
    client, _ = hub_side
    deployment, _, _ = deployed
    creds = client("sts").assume_role(RoleArn=deployment.outputs["HubAccessRoleArn"], RoleSessionName="ec2hub-ec2hub",
                                      ExternalId=TARGET_EXTERNAL_ID)["Credentials"]
    assumed = boto3.client("ec2", region_name=TARGET_REGION, endpoint_url=emulator.endpoint_url,
                           aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                           aws_session_token=creds["SessionToken"])
    template = json.loads(deployment.outputs["LaunchTemplates"])[TARGET_CLASS]
    subnet = next(iter(json.loads(deployment.outputs["NotebookSubnets"]).values()))
    [launched] = assumed.run_instances(LaunchTemplate={"LaunchTemplateId": template}, SubnetId=subnet,
                                       MinCount=1, MaxCount=1)["Instances"]
    try:
        b = account_session(emulator.endpoint_url, TARGET_ACCOUNT, TARGET_REGION).client(
            "ec2", endpoint_url=emulator.endpoint_url)
        [seen] = [i for r in b.describe_instances(InstanceIds=[launched["InstanceId"]])["Reservations"]
                  for i in r["Instances"]]
        assert seen["SubnetId"] == subnet and seen["PrivateIpAddress"].startswith("10.1.")
        for region in (REGION, TARGET_REGION):
            assert [i["InstanceId"] for r in client("ec2", region).describe_instances()["Reservations"]
                    for i in r["Instances"]] == []
    finally:
        assumed.terminate_instances(InstanceIds=[launched["InstanceId"]])
