"""The hub API's stable name (infra/dns.py): a private hosted zone of the VPC, the one record the
hub role may UPSERT, and the settings that tell the hub both."""

from __future__ import annotations

import json
import re

import pytest
from infra_testing import join_text, logical_id_by_description
from test_infra_settings import substitute

from infra.dns import delete_record_command

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
    # No record in the template: the group's host has no address at synth, and CloudFormation could
    # not delete a record whose value the hub has since changed. The hub makes it at its start; the
    # stack's output deletes it before cdk destroy (a zone holding a record cannot be deleted).
    assert not s.resources("AWS::Route53::RecordSet")
    command = join_text(s.template["Outputs"]["DeleteHubRecordCommand"]["Value"])
    zone_ref = "{" + only_zone(s) + "}"
    assert command == (
        f"aws route53 change-resource-record-sets --region us-east-1 --hosted-zone-id {zone_ref} --change-batch "
        f'"$(aws route53 list-resource-record-sets --region us-east-1 --hosted-zone-id {zone_ref} '
        f"--query \"{{Changes:ResourceRecordSets[?Name=='hub.{zone_name}.' && Type=='A']"
        f".{{Action:'DELETE',ResourceRecordSet:@}}}}\" --output json)\""
    )


def test_the_delete_command_query_makes_the_delete_of_the_current_record():
    """The command's query, run (as the AWS CLI does, with JMESPath) over a ListResourceRecordSets
    answer, is the ChangeBatch that deletes exactly the hub's A record with its current values."""
    import jmespath

    command = delete_record_command(zone_id="Z1", record_name="hub.ec2hub.internal", region="us-east-1")
    query = re.search(r'--query "(.*)" --output', command).group(1)
    answer = {"ResourceRecordSets": [
        {"Name": "ec2hub.internal.", "Type": "SOA", "TTL": 900, "ResourceRecords": [{"Value": "ns. x. 1 2 3 4 5"}]},
        {"Name": "hub.ec2hub.internal.", "Type": "A", "TTL": 10, "ResourceRecords": [{"Value": "10.0.17.9"}]},
    ]}
    assert jmespath.search(query, answer) == {"Changes": [{"Action": "DELETE", "ResourceRecordSet": {
        "Name": "hub.ec2hub.internal.", "Type": "A", "TTL": 10, "ResourceRecords": [{"Value": "10.0.17.9"}]}}]}


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
