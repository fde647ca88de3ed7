"""The hub API's stable name (infra/dns.py): a private hosted zone of the VPC, the one record the
hub role may UPSERT, and the settings that tell the hub both."""

from __future__ import annotations

import json

import pytest
from infra_testing import logical_id_by_description
from test_infra_settings import substitute

ZONES = {"default": "ec2hub.internal", "full": "research.corp.internal"}  # ec2hub.yaml's default; FULL_CONTEXT's


@pytest.fixture(params=["default", "full"])
def synth_and_zone(request):
    return request.getfixturevalue(f"{request.param}_synth"), ZONES[request.param]


def only_zone(s) -> str:
    (zone,) = s.resources("AWS::Route53::HostedZone")
    return zone


def test_the_zone_is_private_to_the_stacks_vpc_and_its_record_names_the_hub_instance(synth_and_zone):
    s, zone_name = synth_and_zone
    (vpc,) = s.resources("AWS::EC2::VPC")
    zone = s.template["Resources"][only_zone(s)]["Properties"]
    assert zone["Name"] == zone_name + "."
    assert zone["VPCs"] == [{"VPCId": {"Ref": vpc}, "VPCRegion": "us-east-1"}]
    # A private zone resolves only where the VPC's DNS does (Route 53 developer guide, "Considerations
    # when working with a private hosted zone": enableDnsHostnames and enableDnsSupport).
    assert s.template["Resources"][vpc]["Properties"]["EnableDnsSupport"] is True
    assert s.template["Resources"][vpc]["Properties"]["EnableDnsHostnames"] is True
    # The record the hub UPSERTs at every start, as the stack makes it: at the hub instance's private
    # IP, what the hub writes while that instance is the hub host (and deleted with the stack).
    (instance,) = s.resources("AWS::EC2::Instance")
    (record,) = s.resources("AWS::Route53::RecordSet").values()
    assert {k: v for k, v in record["Properties"].items() if k != "Comment"} == {
        "Name": f"hub.{zone_name}.",
        "Type": "A",
        "TTL": "10",
        "ResourceRecords": [{"Fn::GetAtt": [instance, "PrivateIp"]}],
        "HostedZoneId": {"Ref": only_zone(s)},
    }


def test_hub_role_may_only_upsert_the_one_a_record(synth_and_zone):
    s, zone_name = synth_and_zone
    role = logical_id_by_description(s, "AWS::IAM::Role", "ec2hub hub host")
    policy = s.template["Resources"][logical_id_by_description(s, "AWS::IAM::ManagedPolicy", "DNS name")]["Properties"]
    assert policy["Roles"] == [{"Ref": role}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement == {
        "Sid": "ClaimHubApiRecord",
        "Effect": "Allow",
        "Action": "route53:ChangeResourceRecordSets",
        "Resource": {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":route53:::hostedzone/",
                                       {"Ref": only_zone(s)}]]},
        "Condition": {"ForAllValues:StringEquals": {
            "route53:ChangeResourceRecordSetsNormalizedRecordNames": [f"hub.{zone_name}"],
            "route53:ChangeResourceRecordSetsRecordTypes": ["A"],
            "route53:ChangeResourceRecordSetsActions": ["UPSERT"],
        }},
    }
    # No other statement of any policy of the stack allows a Route 53 action.
    route53 = [st for r in [*s.resources("AWS::IAM::Policy").values(), *s.resources("AWS::IAM::ManagedPolicy").values()]
               for st in r["Properties"]["PolicyDocument"]["Statement"]
               if "route53" in json.dumps(st.get("Action")) and st.get("Sid") != "ClaimHubApiRecord"]
    assert route53 == []


def test_the_settings_name_the_zone_and_the_record(synth_and_zone):
    s, zone_name = synth_and_zone
    (parameter,) = s.resources("AWS::SSM::Parameter").values()
    settings = json.loads(substitute(parameter["Properties"]["Value"], s.template))
    zone_index = sorted(s.template["Resources"]).index(only_zone(s))
    assert (settings["hub_dns_zone_id"], settings["hub_dns_name"]) == (f"Z{zone_index:020X}", f"hub.{zone_name}")
