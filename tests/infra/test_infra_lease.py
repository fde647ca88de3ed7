"""The hub lease table and its grant, and the hub's pinned AMI."""

from __future__ import annotations

import json

import pytest
from infra_testing import hub_host, logical_id_by_description, policy_statements, synth
from test_infra_settings import substitute

from infra.config import ConfigError

AL2023_LOOKUP = ("ssm:account=111111111111:parameterName=/aws/service/ami-amazon-linux-latest/"
                 "al2023-ami-kernel-default-x86_64:region=us-east-1")


@pytest.mark.parametrize("name", ["default", "full"])
def test_lease_table_is_on_demand_encrypted_with_recovery_and_named_in_the_settings(request, name):
    s = request.getfixturevalue(f"{name}_synth")
    hub_id = s.context.get("hub_id", "ec2hub")
    s.assertions.has_resource_properties("AWS::DynamoDB::Table", {
        "TableName": f"ec2hub-{hub_id}-lease",
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": "hub_id", "KeyType": "HASH"}],
        "SSESpecification": {"SSEEnabled": True},
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
    })
    (parameter,) = s.resources("AWS::SSM::Parameter").values()
    settings = json.loads(substitute(parameter["Properties"]["Value"], s.template))
    assert settings["lease_table"] == f"ec2hub-{hub_id}-lease"


@pytest.mark.parametrize("name", ["default", "full"])
def test_hub_role_may_touch_only_its_own_lease_item(request, name):
    s = request.getfixturevalue(f"{name}_synth")
    hub_id = s.context.get("hub_id", "ec2hub")
    (table,) = [lid for lid, r in s.resources("AWS::DynamoDB::Table").items()
                if r["Properties"].get("TableName") == f"ec2hub-{hub_id}-lease"]
    role = logical_id_by_description(s, "AWS::IAM::Role", "ec2hub hub host")
    assert policy_statements(s, role)["HoldHubLease"] == {
        "Sid": "HoldHubLease",
        "Effect": "Allow",
        "Action": ["dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem"],
        "Resource": {"Fn::GetAtt": [table, "Arn"]},
        "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [hub_id]}},
    }
    # No other statement of any role names the table.
    others = [st for r in s.resources("AWS::IAM::Policy").values()
              for st in r["Properties"]["PolicyDocument"]["Statement"]
              if table in json.dumps(st) and st.get("Sid") != "HoldHubLease"]
    assert others == []


def test_health_check_asks_the_lease_holder(default_synth):
    default_synth.assertions.has_resource_properties("AWS::ElasticLoadBalancingV2::TargetGroup", {
        "HealthCheckPath": "/hub/ec2hub/health", "Matcher": {"HttpCode": "200"}})


def hub_image_id(s) -> object:
    return hub_host(s)["ImageId"]


@pytest.fixture(scope="module")
def image_synths(tmp_path_factory):
    """Synths where AWS's "latest AL2023" differs (the lookup's answer), with and without a pin."""
    def image(latest, pin=None):
        context = {AL2023_LOOKUP: latest, **({"hub_ami": pin} if pin else {})}
        return hub_image_id(synth(tmp_path_factory, context))

    return {
        ("old", None): image("ami-0000000000000000a"),
        ("old", "pin1"): image("ami-0000000000000000a", "ami-0aaaaaaaaaaaaaaa1"),
        ("new", "pin1"): image("ami-0000000000000000b", "ami-0aaaaaaaaaaaaaaa1"),
        ("new", "pin2"): image("ami-0000000000000000b", "ami-0aaaaaaaaaaaaaaa2"),
    }


def test_hub_ami_changes_only_with_the_pin(image_synths, default_synth):
    assert image_synths[("old", "pin1")] == image_synths[("new", "pin1")] == "ami-0aaaaaaaaaaaaaaa1"
    assert image_synths[("new", "pin2")] == "ami-0aaaaaaaaaaaaaaa2"
    # Without hub_ami the image is the lookup cached in the context (cdk.context.json), a
    # literal (the old latest_amazon_linux2023() was a Ref to an SSM parameter resolved at deploy).
    assert image_synths[("old", None)] == "ami-0000000000000000a"
    assert hub_image_id(default_synth) == "ami-0a1b2c3d4e5f60718"  # cdk.json's offline placeholder
    assert not default_synth.resources("AWS::EC2::Instance")


def test_a_malformed_hub_ami_is_a_one_line_error():
    from infra_testing import required_context

    import infra

    with pytest.raises(ConfigError, match=r"^context hub_ami: 'al2023' is not an AMI id \(ami-\.\.\.\)$"):
        infra.build_app(required_context({"hub_ami": "al2023"}))
