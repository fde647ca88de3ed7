"""Encryption at rest and in transit, and each security-group path (nothing else open)."""

from __future__ import annotations

from aws_cdk.assertions import Match
from infra_testing import group_ref, ingress_rules, join_text, logical_id_by_description


def sg(synth, fragment):
    return logical_id_by_description(
        synth, "AWS::EC2::SecurityGroup", fragment, key="GroupDescription"
    )


def only_rule(synth, group, port, source):
    rules = [
        r for r in ingress_rules(synth, group) if r["FromPort"] <= port <= r["ToPort"]
    ]
    assert len(rules) == 1, rules
    assert (
        rules[0]["IpProtocol"] == "tcp"
        and rules[0]["FromPort"] == rules[0]["ToPort"] == port
    )
    assert rules[0]["SourceSecurityGroupId"] == group_ref(source)


def test_notebooks_accept_only_8888_from_the_hub(any_synth):
    notebooks, hub = sg(any_synth, "notebook servers"), sg(any_synth, "hub host")
    assert len(ingress_rules(any_synth, notebooks)) == 1
    only_rule(any_synth, notebooks, 8888, hub)


def test_hub_accepts_8000_only_from_the_load_balancer_and_8081_only_from_notebooks(
    any_synth,
):
    hub, alb, notebooks = (
        sg(any_synth, "hub host"),
        sg(any_synth, "ec2hub load balancer"),
        sg(any_synth, "notebook servers"),
    )
    assert len(ingress_rules(any_synth, hub)) == 2
    only_rule(any_synth, hub, 8000, alb)
    only_rule(any_synth, hub, 8081, notebooks)


def test_efs_accepts_nfs_only_from_hub_and_notebooks(any_synth):
    efs = sg(any_synth, "home directories")
    rules = ingress_rules(any_synth, efs)
    assert sorted((r["FromPort"], r["ToPort"]) for r in rules) == [
        (2049, 2049),
        (2049, 2049),
    ]
    assert {r["SourceSecurityGroupId"]["Fn::GetAtt"][0] for r in rules} == {
        sg(any_synth, "hub host"),
        sg(any_synth, "notebook servers"),
    }


def test_load_balancer_accepts_only_web_ports(default_synth, full_synth):
    assert [
        r["FromPort"]
        for r in ingress_rules(default_synth, sg(default_synth, "ec2hub load balancer"))
    ] == [80]
    assert sorted(
        r["FromPort"]
        for r in ingress_rules(full_synth, sg(full_synth, "ec2hub load balancer"))
    ) == [80, 443]


def test_interface_endpoints_accept_https_only_from_hub_and_notebooks(
    full_synth, default_synth
):
    endpoints = sg(full_synth, "interface VPC endpoints")
    rules = ingress_rules(full_synth, endpoints)
    assert {
        (r["FromPort"], r["SourceSecurityGroupId"]["Fn::GetAtt"][0]) for r in rules
    } == {
        (443, sg(full_synth, "hub host")),
        (443, sg(full_synth, "notebook servers")),
    }
    services = {
        join_text(e["Properties"]["ServiceName"]).rsplit(".", 1)[1]
        for e in full_synth.resources("AWS::EC2::VPCEndpoint").values()
    }
    assert services == {"ec2", "ec2messages", "ssm", "ssmmessages", "logs", "s3"}
    assert default_synth.resources("AWS::EC2::VPCEndpoint") == {}


def test_efs_is_encrypted_and_backed_up(any_synth):
    any_synth.assertions.has_resource_properties(
        "AWS::EFS::FileSystem",
        {
            "Encrypted": True,
            "BackupPolicy": {"Status": "ENABLED"},
            "ThroughputMode": "elastic",
        },
    )


def test_access_log_bucket_is_encrypted_private_and_ssl_only(any_synth):
    any_synth.assertions.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                ]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
        },
    )
    any_synth.assertions.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "PolicyDocument": Match.object_like(
                {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Deny",
                                    "Condition": {
                                        "Bool": {"aws:SecureTransport": "false"}
                                    },
                                }
                            )
                        ]
                    )
                }
            )
        },
    )


def test_flow_logs_go_to_a_kms_encrypted_log_group(any_synth):
    # The one log group the stack does not name (the hub and notebook groups are named by hub id).
    ((group_id, group),) = [
        (k, v) for k, v in any_synth.resources("AWS::Logs::LogGroup").items() if "LogGroupName" not in v["Properties"]
    ]
    assert "Fn::GetAtt" in group["Properties"]["KmsKeyId"]
    key_id = group["Properties"]["KmsKeyId"]["Fn::GetAtt"][0]
    assert (
        any_synth.template["Resources"][key_id]["Properties"]["EnableKeyRotation"]
        is True
    )
    any_synth.assertions.has_resource_properties(
        "AWS::EC2::FlowLog",
        {
            "LogGroupName": {"Ref": group_id},
            "TrafficType": "ALL",
            "ResourceType": "VPC",
        },
    )


def test_vpc_spans_two_azs_with_configurable_nat(default_synth, full_synth):
    for synth, nats in ((default_synth, 1), (full_synth, 2)):
        subnets = synth.resources("AWS::EC2::Subnet").values()
        assert len({s["Properties"]["AvailabilityZone"] for s in subnets}) == 2
        assert len(synth.resources("AWS::EC2::NatGateway")) == nats
