"""Issue 14 in the sandbox: a two-account deployment boots a notebook in account B that registers
with the hub in account A.

The shared e2e sandbox runs with ``--two-accounts`` (sandbox/runner.py ``deploy_target_account``
and ``TargetAccount``): the target stack deployed into B (222222222222, eu-central-1), the hub
stack updated with its outputs, B's VPC a namespace and range of its own, peered with the hub's
(only the hub API's port into A, only the notebook port into B), the hub's private zone answered
in B. Here: the hub's spawner, in the hub host in A, launches from B's launch template with the
assumed role; the instance boots in B's network from that template's user data, reads its secret
from B's SSM, and its jupyterhub-singleuser registers with the hub API in A; the user reaches it
through A's proxy. Runs before test_redeploy (whose catalogs have no target).
"""

from __future__ import annotations

import ipaddress
import json

import boto3
import pytest
from test_redeploy import in_group

pytestmark = pytest.mark.slow

RESEARCHER = "researcher-b"
# The kernel's own address, as the instance's network gives it (no packet is sent: UDP connect).
OWN_ADDRESS = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('10.0.0.1', 9))\nprint(s.getsockname()[0])"


def account_b(hub) -> dict:
    """Clients acting in account B (its administrator's role, assumed), in B's region."""
    target = hub.env["target"]
    sts = boto3.client("sts", region_name=hub.env["region"], endpoint_url=hub.env["aws_endpoint_url"],
                       aws_access_key_id="sandbox", aws_secret_access_key="sandbox")
    creds = sts.assume_role(RoleArn=target["admin_role_arn"], RoleSessionName="e2e")["Credentials"]
    session = boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                            aws_session_token=creds["SessionToken"], region_name=target["region"])
    return {name: session.client(name, endpoint_url=hub.env["aws_endpoint_url"])
            for name in ("ec2", "ssm", "sts", "iam", "cloudformation")}


def hub_settings(hub) -> dict:
    return json.loads(hub.ssm.get_parameter(Name=f"/ec2hub/{hub.env['stack_name']}/settings")["Parameter"]["Value"])


def instances_of(ec2, user: str) -> list[dict]:
    reservations = ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["ec2hub:user"]}])["Reservations"]
    return [i for r in reservations for i in r["Instances"]
            if {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get("ec2hub:user") == user]


def test_the_target_stack_is_in_account_b_and_the_hub_stack_reads_its_outputs(hub):
    """docs/DEPLOY.md steps 3 and 5, as the sandbox ran them: the target stack in B's
    CloudFormation, its role trusting the hub stack's role with the external id; nothing of it in
    A; the hub's settings name B's subnets and B's template for the class."""
    target, b = hub.env["target"], account_b(hub)
    a_cfn = boto3.client("cloudformation", region_name=hub.env["region"], endpoint_url=hub.env["aws_endpoint_url"],
                         aws_access_key_id="sandbox", aws_secret_access_key="sandbox")
    [hub_stack] = a_cfn.describe_stacks(StackName=hub.env["stack_name"])["Stacks"]
    hub_role = {o["OutputKey"]: o["OutputValue"] for o in hub_stack["Outputs"]}["HubRoleArn"]
    [stack] = b["cloudformation"].describe_stacks(StackName=target["stack_name"])["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}

    role = b["iam"].get_role(RoleName=outputs["HubAccessRoleArn"].rsplit("/", 1)[1])["Role"]
    assert role["Arn"].startswith(f"arn:aws:iam::{target['account']}:role/")
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": hub_role} and hub_role.startswith(f"arn:aws:iam::{hub_stack['StackId'].split(':')[4]}:")
    assert list(trust["Condition"]["StringEquals"]) == ["sts:ExternalId"]

    with pytest.raises(a_cfn.exceptions.ClientError):
        a_cfn.describe_stacks(StackName=target["stack_name"])
    assert hub.ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": [target["cidr"]]}])["Vpcs"] == []

    settings = hub_settings(hub)
    [cls] = [c for c in settings["classes"] if c["slug"] == target["class"]]
    assert cls["launch_template_id"] == json.loads(outputs["LaunchTemplates"])[target["class"]]
    assert settings["targets"][target["name"]]["subnets"] == json.loads(outputs["NotebookSubnets"])
    b["ec2"].describe_launch_templates(LaunchTemplateIds=[cls["launch_template_id"]])  # it is B's


def test_a_notebook_in_account_b_registers_with_the_hub_in_a(hub):
    target = hub.env["target"]
    b = account_b(hub)
    assert b["sts"].get_caller_identity()["Account"] == target["account"]
    in_group(hub, target["name"], RESEARCHER)

    model = hub.start(RESEARCHER, {"instance_class": target["class"]}, timeout=180)
    try:
        [instance] = [i for i in instances_of(b["ec2"], RESEARCHER) if i["State"]["Name"] == "running"]
        assert model["state"]["instance_id"] == instance["InstanceId"]
        assert model["state"]["target"] == target["name"]
        assert ipaddress.ip_address(instance["PrivateIpAddress"]) in ipaddress.ip_network(target["cidr"])
        assert instance["Placement"]["AvailabilityZone"].startswith(target["region"])
        assert hub.instances(RESEARCHER) == []  # none in the hub's account
        # Its secret is in B's SSM (the hub wrote it there with the assumed role); the server
        # read it at boot: every request below is authenticated by the hub API in A.
        prefix = hub_settings(hub)["targets"][target["name"]]["secret_prefix"]
        b["ssm"].get_parameter(Name=f"{prefix}{instance['InstanceId']}", WithDecryption=False)

        # Through the hub's proxy in A, the server in B answers: /api/status with the user's
        # token checked against the hub API (B -> A, port 8081), and a kernel on B's instance.
        status, reply = hub.server_api(RESEARCHER, "GET", "/status")
        assert status == 200, (status, reply)
        assert hub.run_code(RESEARCHER, OWN_ADDRESS).strip() == instance["PrivateIpAddress"]
    finally:
        hub.stop(RESEARCHER)

    live = [i["InstanceId"] for i in instances_of(b["ec2"], RESEARCHER)
            if i["State"]["Name"] in ("pending", "running", "stopping", "stopped")]
    assert live == [], f"stop left {live} in account {target['account']}"
    with pytest.raises(b["ssm"].exceptions.ParameterNotFound):
        b["ssm"].get_parameter(Name=f"{prefix}{instance['InstanceId']}")
