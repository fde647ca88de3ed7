"""What the emulator adds for the hub's Auto Scaling group of one: a launch template's instance
profile and metadata options on the instances launched from it (moto drops both), CloudFormation's
SignalResource (moto has none), and the hub launcher's signal sent through it; and the trail of who
changed what, which tells two hub hosts' calls apart."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from pathlib import Path

import boto3
import pytest
from waiting import free_port

from sandbox.emulator import EmulatorClient, start_emulator
from sandbox.imds import ImdsData, instance_access_key

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bootstrap"))
from ec2hub_bootstrap import hub as launch

REGION = "us-east-1"


@pytest.fixture(scope="module")
def emulator():
    emulator = start_emulator(0)
    yield emulator
    emulator.stop()


@pytest.fixture
def aws(emulator, monkeypatch):
    for key, value in {"AWS_ENDPOINT_URL": emulator.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    return lambda service: boto3.client(service, region_name=REGION, endpoint_url=emulator.endpoint_url)


def test_an_instance_from_a_launch_template_gets_its_profile_and_metadata_options(aws):
    iam, ec2 = aws("iam"), aws("ec2")
    iam.create_role(RoleName="hub-role", AssumeRolePolicyDocument="{}")
    profile = iam.create_instance_profile(InstanceProfileName="hub-profile")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName="hub-profile", RoleName="hub-role")
    template = ec2.create_launch_template(LaunchTemplateName="hub", LaunchTemplateData={
        "ImageId": "ami-12c6146b", "InstanceType": "t3.medium",
        "IamInstanceProfile": {"Arn": profile["Arn"]},
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "InstanceMetadataTags": "enabled"},
    })["LaunchTemplate"]
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    # Through the group, as the stack's group launches its host (and moto's CloudFormation does).
    autoscaling = aws("autoscaling")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="hub-group", MinSize=1, MaxSize=1, DesiredCapacity=1, VPCZoneIdentifier=subnet,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "$Latest"})
    [member] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["hub-group"])["AutoScalingGroups"][0][
        "Instances"]
    [instance] = ec2.describe_instances(InstanceIds=[member["InstanceId"]])["Reservations"][0]["Instances"]
    assert instance["IamInstanceProfile"]["Arn"] == profile["Arn"]
    assert {k: instance["MetadataOptions"][k] for k in ("HttpTokens", "HttpPutResponseHopLimit",
                                                        "InstanceMetadataTags")} == {
        "HttpTokens": "required", "HttpPutResponseHopLimit": 1, "InstanceMetadataTags": "enabled"}
    # A request's own options win, as on EC2.
    [own] = ec2.run_instances(MinCount=1, MaxCount=1, SubnetId=subnet,
                              LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"]},
                              MetadataOptions={"HttpTokens": "optional"})["Instances"]
    assert own["MetadataOptions"]["HttpTokens"] == "optional"


def test_a_group_registers_its_pending_instance_in_its_target_group(aws, emulator):
    """The stack's group names the load balancer's target group; with the emulator's pending
    period moto refused the group's launch (InvalidTarget), and so the whole stack."""
    ec2, elbv2, autoscaling = aws("ec2"), aws("elbv2"), aws("autoscaling")
    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    target_group = elbv2.create_target_group(Name="hub-targets", Protocol="HTTP", Port=8000, VpcId=vpc,
                                             TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
    template = ec2.create_launch_template(LaunchTemplateName="hub-pending", LaunchTemplateData={
        "ImageId": "ami-12c6146b", "InstanceType": "t3.medium"})["LaunchTemplate"]["LaunchTemplateId"]
    emulator.set_timing(pending_s=30)
    try:
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName="hub-pending", MinSize=1, MaxSize=1, DesiredCapacity=1, VPCZoneIdentifier=subnet,
            LaunchTemplate={"LaunchTemplateId": template}, TargetGroupARNs=[target_group])
    finally:
        emulator.set_timing(pending_s=0)
    [member] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["hub-pending"])["AutoScalingGroups"][0][
        "Instances"]
    assert ec2.describe_instances(InstanceIds=[member["InstanceId"]])["Reservations"][0]["Instances"][0]["State"][
        "Name"] == "pending"
    targets = elbv2.describe_target_health(TargetGroupArn=target_group)["TargetHealthDescriptions"]
    assert [t["Target"]["Id"] for t in targets] == [member["InstanceId"]]


class _Hub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/hub/api/" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hub/api/"
    server.shutdown()


def test_the_first_boot_signals_success_once_its_hub_answers(aws, emulator, hub_url, capsys):
    before = len(EmulatorClient(emulator.endpoint_url).signals())
    tags = {"ec2hub:cfn-signal": "ec2hub/HubGroup28497227"}
    assert launch.signal_group(tags, "i-0123456789abcdef0", REGION, url=hub_url, wait_s=30) == "SUCCESS"
    assert [{k: v for k, v in s.items() if k != "time"} for s in EmulatorClient(emulator.endpoint_url).signals()[before:]] == [
        {"stack": "ec2hub", "logical_id": "HubGroup28497227", "unique_id": "i-0123456789abcdef0", "status": "SUCCESS"}]
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"ec2hub-hub: signal: ec2hub/HubGroup28497227: SUCCESS (the hub answers at {hub_url})")


def test_a_hub_that_never_answers_is_signalled_as_a_failure(aws, emulator, capsys):
    before = len(EmulatorClient(emulator.endpoint_url).signals())
    url = f"http://127.0.0.1:{free_port()}/hub/api/"  # nothing listens
    tags = {"ec2hub:cfn-signal": "ec2hub/HubGroup28497227"}
    assert launch.signal_group(tags, "i-0a", REGION, url=url, wait_s=0.5, interval_s=0.1) == "FAILURE"
    assert [s["status"] for s in EmulatorClient(emulator.endpoint_url).signals()[before:]] == ["FAILURE"]
    assert f"FAILURE (no answer at {url} within 0 s)" in capsys.readouterr().out


@pytest.mark.parametrize("value", [None, "", "ec2hub", "ec2hub/Hub Group", "ec2hub/a/b"])
def test_no_usable_signal_tag_signals_nothing(aws, emulator, hub_url, value, capsys):
    before = len(EmulatorClient(emulator.endpoint_url).signals())
    tags = {} if value is None else {"ec2hub:cfn-signal": value}
    assert launch.signal_group(tags, "i-0a", REGION, url=hub_url, wait_s=1) is None
    assert EmulatorClient(emulator.endpoint_url).signals()[before:] == []
    assert "nothing to signal" in capsys.readouterr().out


def test_the_trail_records_who_changed_what_and_leaves_reads_out(emulator):
    host = ImdsData(instance_id="i-0aaaaaaaaaaaaaaa1")  # the key its IMDS hands out
    assert host.access_key_id == instance_access_key("i-0aaaaaaaaaaaaaaa1") == "ASIA0AAAAAAAAAAAAAAA1"
    kw = {"region_name": REGION, "endpoint_url": emulator.endpoint_url, "aws_secret_access_key": "x"}
    as_host = boto3.client("ec2", aws_access_key_id=host.access_key_id, **kw)
    as_other = boto3.client("ec2", aws_access_key_id="ASIAOTHERCALLER01", **kw)
    client = EmulatorClient(emulator.endpoint_url)
    before = len(client.trail())
    [launched] = as_host.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"]
    iid = launched["InstanceId"]
    as_other.describe_instances(InstanceIds=[iid])
    as_other.stop_instances(InstanceIds=[iid])
    assert [(c["action"], c["access_key_id"], c["instance_ids"]) for c in client.trail()[before:]] == [
        ("RunInstances", "ASIA0AAAAAAAAAAAAAAA1", []), ("StopInstances", "ASIAOTHERCALLER01", [iid])]


def test_a_stack_update_changes_a_security_groups_rules_in_place(aws):
    """CloudFormation updates a group's ingress in place: its id stays, and a launch template that
    names it still launches (moto re-created the group under a new id, and the hub group's next
    instance named one that no longer existed)."""
    cfn, ec2 = aws("cloudformation"), aws("ec2")

    def template(cidrs):
        return json.dumps({"Resources": {
            "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.40.0.0/16"}},
            "Group": {"Type": "AWS::EC2::SecurityGroup", "Properties": {
                "GroupDescription": "hub", "VpcId": {"Ref": "Vpc"},
                "SecurityGroupIngress": [{"IpProtocol": "tcp", "FromPort": 8081, "ToPort": 8081, "CidrIp": c}
                                         for c in cidrs]}},
            "Template": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {
                "ImageId": "ami-12345678", "SecurityGroupIds": [{"Fn::GetAtt": ["Group", "GroupId"]}]}}},
        }})

    def group_of(stack):
        [resource] = [r for r in cfn.describe_stack_resources(StackName=stack)["StackResources"]
                      if r["LogicalResourceId"] == "Group"]
        return resource["PhysicalResourceId"]

    stack = "sg-update"
    cfn.create_stack(StackName=stack, TemplateBody=template(["10.40.0.0/16"]))
    before = group_of(stack)
    cfn.update_stack(StackName=stack, TemplateBody=template(["10.40.0.0/16", "10.1.0.0/16"]))
    assert group_of(stack) == before
    [group] = ec2.describe_security_groups(GroupIds=[before])["SecurityGroups"]
    assert sorted(r["CidrIp"] for p in group["IpPermissions"] for r in p["IpRanges"]) == ["10.1.0.0/16", "10.40.0.0/16"]
    cfn.delete_stack(StackName=stack)
