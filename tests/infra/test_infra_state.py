"""The hub's state off its host: the RDS database, its secret, the cookie secret and proxy token."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match
from infra_testing import (
    as_list,
    group_ref,
    hub_group,
    hub_host_tags,
    ingress_rules,
    join_text,
    logical_id_by_description,
    policy_statements,
    synth,
)

from infra.config import ConfigError

SECRET_TAGS = {
    "database": "ec2hub:database-secret",
    "cookie-secret": "ec2hub:cookie-secret",
    "proxy-token": "ec2hub:proxy-token-secret",
}


def database(s) -> tuple[str, dict]:
    ((logical, resource),) = s.resources("AWS::RDS::DBInstance").items()
    return logical, resource


def hub_tags(s) -> dict:
    return hub_host_tags(s)


def secrets_by_purpose(s) -> dict[str, tuple[str, dict]]:
    """purpose ("database", ...) -> (logical id, properties) of the stack's secrets."""
    hub_id = s.context.get("hub_id", "ec2hub")
    found = {}
    for logical, secret in s.resources("AWS::SecretsManager::Secret").items():
        name = join_text(secret["Properties"]["Name"])
        prefix = f"ec2hub/{hub_id}/"
        assert name.startswith(prefix) and name.endswith("-{stack-uuid}"), name
        found[name[len(prefix):-len("-{stack-uuid}")]] = (logical, secret["Properties"])
    return found


def test_database_is_small_pinned_encrypted_backed_up_and_protected(any_synth):
    _, db = database(any_synth)
    assert db["DeletionPolicy"] == "Snapshot" and db["UpdateReplacePolicy"] == "Snapshot"
    props = db["Properties"]
    assert {k: props[k] for k in (
        "Engine", "EngineVersion", "AutoMinorVersionUpgrade", "DBInstanceClass", "AllocatedStorage",
        "StorageType", "StorageEncrypted", "BackupRetentionPeriod", "DeletionProtection", "MultiAZ",
        "PubliclyAccessible", "DBName", "MasterUsername", "Port",
    )} == {
        "Engine": "postgres",
        "EngineVersion": "16.9",
        "AutoMinorVersionUpgrade": False,
        "DBInstanceClass": "db.t4g.micro",
        "AllocatedStorage": "20",
        "StorageType": "gp3",
        "StorageEncrypted": True,
        "BackupRetentionPeriod": 7,
        "DeletionProtection": True,
        "MultiAZ": False,
        "PubliclyAccessible": False,
        "DBName": "jupyterhub",
        "MasterUsername": "ec2hub",
        "Port": "5432",
    }
    # In the private subnets, as the hub.
    (group,) = any_synth.resources("AWS::RDS::DBSubnetGroup").values()
    subnets = group["Properties"]["SubnetIds"]
    assert len(subnets) == 2 and all("privateSubnet" in s["Ref"] for s in subnets), subnets


def test_database_password_is_generated_into_its_secret_never_in_the_template(any_synth):
    logical, db = database(any_synth)
    secrets = secrets_by_purpose(any_synth)
    secret_id, secret = secrets["database"]
    assert secret["GenerateSecretString"] == {
        "SecretStringTemplate": '{"username": "ec2hub"}',
        "GenerateStringKey": "password",
        "PasswordLength": 32,
        "ExcludePunctuation": True,
    }
    hub_id = any_synth.context.get("hub_id", "ec2hub")
    name = f"ec2hub/{hub_id}/database-{{stack-uuid}}"
    assert join_text(db["Properties"]["MasterUserPassword"]) == (
        f"{{{{resolve:secretsmanager:{name}:SecretString:password::}}}}"
    )
    assert secret_id in db["DependsOn"]
    # RDS writes host, port and dbname into the same secret: all the hub needs to connect.
    any_synth.assertions.has_resource_properties("AWS::SecretsManager::SecretTargetAttachment", {
        "SecretId": {"Ref": secret_id}, "TargetId": {"Ref": logical}, "TargetType": "AWS::RDS::DBInstance",
    })


def test_cookie_secret_and_proxy_token_are_generated_once_as_32_bytes_of_hex(any_synth):
    secrets = secrets_by_purpose(any_synth)
    assert sorted(secrets) == ["admin-password", "cookie-secret", "database", "proxy-token"]
    for purpose in ("cookie-secret", "proxy-token"):
        _, secret = secrets[purpose]
        assert "SecretString" not in secret
        assert secret["GenerateSecretString"] == {
            "PasswordLength": 64,
            "ExcludeUppercase": True,
            "ExcludePunctuation": True,
            "ExcludeCharacters": "ghijklmnopqrstuvwxyz",
        }


def test_hub_tags_and_outputs_name_the_three_secrets(any_synth):
    hub_id = any_synth.context.get("hub_id", "ec2hub")
    tags = hub_tags(any_synth)
    outputs = any_synth.template["Outputs"]
    for purpose, tag in SECRET_TAGS.items():
        assert join_text(tags[tag]) == f"ec2hub/{hub_id}/{purpose}-{{stack-uuid}}"
    assert {join_text(outputs[k]["Value"]) for k in ("DatabaseSecretName", "CookieSecretName",
                                                      "ProxyTokenSecretName")} == {
        join_text(tags[t]) for t in SECRET_TAGS.values()}
    logical, _ = database(any_synth)
    assert outputs["DatabaseEndpoint"]["Value"] == {"Fn::GetAtt": [logical, "Endpoint.Address"]}
    # The hub starts after its database exists.
    _, group = hub_group(any_synth)
    assert logical in group["DependsOn"]


def test_only_the_hub_reaches_the_database_and_it_reaches_nothing(any_synth):
    group = logical_id_by_description(any_synth, "AWS::EC2::SecurityGroup", "ec2hub database", "GroupDescription")
    hub_group = logical_id_by_description(any_synth, "AWS::EC2::SecurityGroup", "ec2hub hub host", "GroupDescription")
    rules = ingress_rules(any_synth, group)
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"], r.get("SourceSecurityGroupId")) for r in rules] == [
        ("tcp", 5432, 5432, group_ref(hub_group))
    ]
    egress = any_synth.template["Resources"][group]["Properties"]["SecurityGroupEgress"]
    assert [e["Description"] for e in egress] == ["Disallow all traffic"]
    _, db = database(any_synth)
    assert db["Properties"]["VPCSecurityGroups"] == [group_ref(group)]


def test_hub_role_reads_exactly_its_four_secrets_and_no_other(any_synth):
    hub_id = any_synth.context.get("hub_id", "ec2hub")
    role = logical_id_by_description(any_synth, "AWS::IAM::Role", "ec2hub hub host")
    inline = policy_statements(any_synth, role)
    assert [sid for sid, s in inline.items() if any(a.startswith("secretsmanager:") for a in as_list(s["Action"]))] == []
    # One managed policy reads secrets (the other, the hub API's DNS record's: tests/infra/test_infra_dns.py).
    (managed,) = [p for p in any_synth.resources("AWS::IAM::ManagedPolicy").values()
                  if "secretsmanager:" in json.dumps(p["Properties"]["PolicyDocument"])]
    assert managed["Properties"]["Roles"] == [{"Ref": role}]
    (state,) = managed["Properties"]["PolicyDocument"]["Statement"]
    assert state["Sid"] == "ReadHubSecrets"
    assert (state["Effect"], state["Action"]) == ("Allow", "secretsmanager:GetSecretValue")
    arn = "arn:aws:secretsmanager:us-east-1:111111111111:secret:"
    assert [join_text(r) for r in state["Resource"]] == [
        f"{arn}ec2hub/{hub_id}/{purpose}-{{stack-uuid}}-??????" for purpose in ("admin-password", *SECRET_TAGS)
    ]
    # No statement of any role names a secret resource by Ref (an emulator without Secrets
    # Manager in CloudFormation deploys the rest).
    text = json.dumps([r for r in any_synth.resources("AWS::IAM::Policy").values()])
    for logical, _ in secrets_by_purpose(any_synth).values():
        assert logical not in text


def test_database_instance_type_is_a_knob(tmp_path_factory):
    s = synth(tmp_path_factory, {"database_instance_type": "t4g.small"})
    s.assertions.has_resource_properties("AWS::RDS::DBInstance", {"DBInstanceClass": "db.t4g.small"})
    s.assertions.resource_count_is("AWS::RDS::DBInstance", 1)
    s.assertions.has_resource_properties("AWS::RDS::DBInstance", Match.object_like({"Engine": "postgres"}))


def test_database_instance_type_refuses_a_non_rds_class(tmp_path_factory):
    with pytest.raises(ConfigError, match=r"^context database_instance_type: 'db.t4g.micro' is not an RDS class"):
        synth(tmp_path_factory, {"database_instance_type": "db.t4g.micro"})
