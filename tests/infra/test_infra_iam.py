"""The hub's and the notebooks' permissions: each condition that keeps them least-privileged."""

from __future__ import annotations

import copy
import json

import pytest
from aws_cdk.assertions import Match
from ec2spawner.catalog import load_catalog
from infra_testing import (
    REPO,
    as_list,
    hub_host_tags,
    join_text,
    logical_id_by_description,
    notebook_templates,
    policy_statements,
)

from infra.session import SESSION_MANAGER_ACTIONS

PREFIX = "arn:aws:ec2:us-east-1:111111111111"


def role(synth, fragment):
    return logical_id_by_description(synth, "AWS::IAM::Role", fragment)


@pytest.fixture(params=["default", "full"])
def hub(request):
    synth = request.getfixturevalue(f"{request.param}_synth")
    return (
        synth,
        policy_statements(synth, role(synth, "ec2hub hub host")),
        synth.context.get("hub_id", "ec2hub"),
    )


def template_arns(synth):
    return sorted(
        f"{PREFIX}:launch-template/{{{i}}}" for i in notebook_templates(synth)
    )


def test_run_instances_only_from_this_stacks_launch_templates(hub):
    synth, statements, _ = hub
    runs = {
        sid: s
        for sid, s in statements.items()
        if as_list(s["Action"]) == ["ec2:RunInstances"]
    }
    assert len(runs) == 7
    # The launch-template resource itself: this stack's templates, by exact ARN, and nothing else.
    own = runs.pop("UseOwnLaunchTemplates")
    assert sorted(join_text(r) for r in as_list(own["Resource"])) == template_arns(
        synth
    )
    # Everything else a launch touches: only when a launch template is used (so one of ours).
    for statement in runs.values():
        assert statement["Condition"]["ArnLike"] == {
            "ec2:LaunchTemplate": {
                "Fn::Join": [
                    "",
                    [
                        "arn:",
                        {"Ref": "AWS::Partition"},
                        f"{PREFIX[7:]}:launch-template/*",
                    ],
                ]
            }
        }
    created = {
        sid: join_text(statements[sid]["Resource"])
        for sid in (
            "RunInstancesAsTemplated",
            "RunInstancesEncryptedTemplateVolumes",
            "RunInstancesSpotRequests",
        )
    }
    assert created == {
        "RunInstancesAsTemplated": f"{PREFIX}:instance/*",
        "RunInstancesEncryptedTemplateVolumes": f"{PREFIX}:volume/*",
        "RunInstancesSpotRequests": f"{PREFIX}:spot-instances-request/*",
    }


def catalog_instance_types(synth):
    path = synth.context.get("catalog") or REPO / "instance-classes.yaml"
    return sorted({t for cls in load_catalog(path).classes for t in cls.instance_types})


def notebook_profile(synth):
    (profile,) = {
        t["Properties"]["LaunchTemplateData"]["IamInstanceProfile"]["Arn"][
            "Fn::GetAtt"
        ][0]
        for t in notebook_templates(synth).values()
    }
    return profile


def assert_hub_statement(synth, statement: dict) -> None:
    """The hub role's policy has a statement like ``statement`` (Match.object_like)."""
    synth.assertions.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "Roles": [{"Ref": role(synth, "ec2hub hub host")}],
            "PolicyDocument": Match.object_like(
                {"Statement": Match.array_with([Match.object_like(statement)])}
            ),
        },
    )


def test_run_instances_makes_only_what_the_templates_make(hub):
    """Instance type from the catalog, IMDSv2 with hop limit 1, the notebook profile only."""
    synth, _, _ = hub
    assert_hub_statement(
        synth,
        {
            "Sid": "RunInstancesAsTemplated",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Condition": {
                "ArnLike": Match.object_like({"ec2:LaunchTemplate": Match.any_value()}),
                "StringEquals": {
                    "ec2:InstanceType": catalog_instance_types(synth),
                    "ec2:MetadataHttpTokens": "required",
                },
                "ArnEquals": {
                    "ec2:InstanceProfile": {"Fn::GetAtt": [notebook_profile(synth), "Arn"]}
                },
                "NumericLessThanEquals": {"ec2:MetadataHttpPutResponseHopLimit": "1"},
            },
        },
    )


def test_run_instances_volumes_only_the_templates_encrypted_ones(hub):
    synth, _, _ = hub
    assert_hub_statement(
        synth,
        {
            "Sid": "RunInstancesEncryptedTemplateVolumes",
            "Action": "ec2:RunInstances",
            "Condition": Match.object_like(
                {"Bool": {"ec2:Encrypted": "true", "ec2:IsLaunchTemplateResource": "true"}}
            ),
        },
    )


def test_the_templates_satisfy_the_run_instances_conditions(hub):
    """The conditions are the templates' own settings: a launch the spawner makes passes them."""
    synth, statements, _ = hub
    condition = statements["RunInstancesAsTemplated"]["Condition"]
    allowed_types = set(condition["StringEquals"]["ec2:InstanceType"])
    for template in notebook_templates(synth).values():
        data = template["Properties"]["LaunchTemplateData"]
        assert data["InstanceType"] in allowed_types
        assert (
            data["MetadataOptions"]["HttpTokens"]
            == condition["StringEquals"]["ec2:MetadataHttpTokens"]
        )
        assert data["MetadataOptions"]["HttpPutResponseHopLimit"] <= int(
            condition["NumericLessThanEquals"]["ec2:MetadataHttpPutResponseHopLimit"]
        )
        assert (
            data["IamInstanceProfile"]["Arn"]
            == condition["ArnEquals"]["ec2:InstanceProfile"]
        )
        assert all(m["Ebs"]["Encrypted"] is True for m in data["BlockDeviceMappings"])


def test_image_and_security_groups_must_come_from_the_template(hub):
    _, statements, _ = hub
    statement = statements["RunInstancesImageAndGroupsFromTemplate"]
    assert statement["Condition"]["Bool"] == {"ec2:IsLaunchTemplateResource": "true"}
    assert sorted(join_text(r) for r in statement["Resource"]) == sorted(
        ["arn:aws:ec2:us-east-1::image/*", f"{PREFIX}:security-group/*"]
    )


def test_launches_only_into_private_subnets_without_public_address(hub):
    _, statements, _ = hub
    subnets = [
        join_text(r) for r in statements["RunInstancesInNotebookSubnets"]["Resource"]
    ]
    assert len(subnets) == 2 and all("private" in s for s in subnets)
    nic = statements["RunInstancesNoPublicAddress"]
    assert join_text(nic["Resource"]) == f"{PREFIX}:network-interface/*"
    assert nic["Condition"]["BoolIfExists"] == {"ec2:AssociatePublicIpAddress": "false"}


def test_create_tags_only_as_part_of_run_instances(hub):
    _, statements, hub_id = hub
    tagging = [
        s for s in statements.values() if "ec2:CreateTags" in as_list(s["Action"])
    ]
    assert len(tagging) == 1
    assert tagging[0]["Condition"]["StringEquals"] == {
        "ec2:CreateAction": "RunInstances",
        "aws:RequestTag/ec2hub:hub": hub_id,
    }


def test_start_stop_terminate_only_this_hubs_notebooks(hub):
    _, statements, hub_id = hub
    lifecycle = {"ec2:GetConsoleOutput", "ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"}
    matching = [s for s in statements.values() if lifecycle & set(as_list(s["Action"]))]
    assert len(matching) == 1
    (statement,) = matching
    assert set(statement["Action"]) == lifecycle
    assert join_text(statement["Resource"]) == f"{PREFIX}:instance/*"
    assert statement["Condition"]["StringEquals"] == {
        "aws:ResourceTag/ec2hub:hub": hub_id
    }
    assert statement["Condition"]["Null"] == {"aws:ResourceTag/ec2hub:class": "false"}


def test_pass_role_only_the_notebook_role_to_ec2(hub):
    synth, statements, _ = hub
    passing = [s for s in statements.values() if "iam:PassRole" in as_list(s["Action"])]
    assert len(passing) == 1
    assert passing[0]["Resource"] == {
        "Fn::GetAtt": [role(synth, "ec2hub notebook instances"), "Arn"]
    }
    assert passing[0]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}
    }


def test_ssm_only_under_the_hubs_own_prefix(hub):
    _, statements, hub_id = hub
    ssm = [
        s
        for s in statements.values()
        if any(a.startswith("ssm:") for a in as_list(s["Action"]))
    ]
    assert {s["Sid"] for s in ssm} == {
        "WriteServerSecrets",
        "ReadHubParameters",
        "ListServerSecrets",
        "SessionManagerAgent",
    }
    # Listing (names and metadata, no values) and the agent's registration cannot be scoped.
    assert statements["ListServerSecrets"]["Action"] == "ssm:DescribeParameters"
    for statement in ssm:
        if statement["Sid"] in ("ListServerSecrets", "SessionManagerAgent"):
            continue
        for resource in as_list(statement["Resource"]):
            assert join_text(resource).startswith(
                f"arn:aws:ssm:us-east-1:111111111111:parameter/ec2hub/{hub_id}/"
            )
    writes = statements["WriteServerSecrets"]
    assert (
        join_text(writes["Resource"])
        == f"arn:aws:ssm:us-east-1:111111111111:parameter/ec2hub/{hub_id}/servers/*"
    )
    assert {"ssm:PutParameter", "ssm:DeleteParameter", "ssm:AddTagsToResource"} <= set(
        writes["Action"]
    )


def test_only_describe_and_session_manager_are_unscoped(hub):
    _, statements, _ = hub
    unscoped = {
        sid: as_list(s["Action"])
        for sid, s in statements.items()
        if "*" in as_list(s["Resource"])
    }
    assert set(unscoped) == {"DescribeEc2", "ListServerSecrets", "SessionManagerAgent", "ReadPrices"}
    for action in unscoped["DescribeEc2"] + unscoped["ListServerSecrets"]:
        assert action.split(":")[1].startswith("Describe")
    # Public prices: neither action supports resource-level permissions (infra.hub.spend_statements).
    assert unscoped["ReadPrices"] == ["ec2:DescribeSpotPriceHistory", "pricing:GetProducts"]
    assert sorted(unscoped["SessionManagerAgent"]) == sorted(SESSION_MANAGER_ACTIONS)
    for statement in statements.values():
        assert all("*" not in a.split(":")[1] for a in as_list(statement["Action"]))


def test_hub_reads_only_its_spawner_asset_object(hub):
    synth, statements, _ = hub
    asset_url = hub_host_tags(synth)["ec2hub:spawner-asset"]
    bucket_and_key = asset_url.removeprefix("s3://")
    assert (
        join_text(statements["ReadSpawnerPackage"]["Resource"])
        == f"arn:aws:s3:::{bucket_and_key}"
    )
    assert statements["ReadSpawnerPackage"]["Action"] == "s3:GetObject"


def test_notebook_reads_only_the_secret_tagged_with_its_own_arn(any_synth):
    hub_id = any_synth.context.get("hub_id", "ec2hub")
    statements = policy_statements(
        any_synth, role(any_synth, "ec2hub notebook instances")
    )
    assert set(statements) == {
        "ReadOwnServerSecret",
        "DecryptOwnServerSecretViaSsm",
        "SessionManagerAgent",
    }
    read = statements["ReadOwnServerSecret"]
    assert read["Action"] == "ssm:GetParameter"
    assert (
        join_text(read["Resource"])
        == f"arn:aws:ssm:us-east-1:111111111111:parameter/ec2hub/{hub_id}/servers/*"
    )
    assert read["Condition"] == {
        "StringEquals": {
            "ssm:resourceTag/ec2hub:instance-arn": "${ec2:SourceInstanceARN}"
        }
    }
    decrypt = statements["DecryptOwnServerSecretViaSsm"]
    assert decrypt["Action"] == "kms:Decrypt"
    assert decrypt["Condition"]["StringEquals"] == {
        "kms:ViaService": "ssm.us-east-1.amazonaws.com"
    }
    assert join_text(
        decrypt["Condition"]["StringLike"]["kms:EncryptionContext:PARAMETER_ARN"]
    ) == join_text(read["Resource"])


def test_notebook_profile_wraps_the_notebook_role(any_synth):
    profiles = {
        t["Properties"]["LaunchTemplateData"]["IamInstanceProfile"]["Arn"][
            "Fn::GetAtt"
        ][0]
        for t in notebook_templates(any_synth).values()
    }
    assert len(profiles) == 1
    profile = any_synth.template["Resources"][profiles.pop()]
    assert profile["Properties"]["Roles"] == [
        {"Ref": role(any_synth, "ec2hub notebook instances")}
    ]


def test_no_instance_role_has_aws_managed_policies(any_synth):
    """AmazonSSMManagedInstanceCore would allow ssm:GetParameter on every parameter."""
    for fragment in ("ec2hub hub host", "ec2hub notebook instances"):
        props = any_synth.template["Resources"][role(any_synth, fragment)]["Properties"]
        assert "ManagedPolicyArns" not in props


def test_notebook_can_read_no_parameter_but_its_own_secret(any_synth):
    statements = policy_statements(
        any_synth, role(any_synth, "ec2hub notebook instances")
    )
    for sid, statement in statements.items():
        actions = as_list(statement["Action"])
        reads = [a for a in actions if a.startswith(("ssm:Get", "kms:"))]
        if sid == "ReadOwnServerSecret":
            assert reads == ["ssm:GetParameter"] and "Condition" in statement
        elif sid == "DecryptOwnServerSecretViaSsm":
            assert reads == ["kms:Decrypt"] and "StringLike" in statement["Condition"]
        else:
            assert reads == [], (sid, actions)


def test_session_manager_is_the_only_unscoped_notebook_permission(any_synth):
    statements = policy_statements(
        any_synth, role(any_synth, "ec2hub notebook instances")
    )
    unscoped = [s for s in statements.values() if "*" in as_list(s["Resource"])]
    assert [s["Sid"] for s in unscoped] == ["SessionManagerAgent"]
    assert sorted(unscoped[0]["Action"]) == sorted(SESSION_MANAGER_ACTIONS)


def test_hub_reads_the_admin_password_secret_by_its_exact_name(hub):
    # The three secrets of the hub's state, and the policy they share: tests/infra/test_infra_state.py.
    synth, statements, hub_id = hub
    name = f"ec2hub/{hub_id}/admin-password-{{stack-uuid}}"
    assert name in [join_text(s["Properties"]["Name"]) for s in synth.resources("AWS::SecretsManager::Secret").values()]
    assert [s for s in statements.values() if any(a.startswith("secretsmanager:") for a in as_list(s["Action"]))] == []
    # One managed policy reads secrets (the other, the hub API's DNS record's: tests/infra/test_infra_dns.py).
    (managed,) = [p for p in synth.resources("AWS::IAM::ManagedPolicy").values()
                  if "secretsmanager:" in json.dumps(p["Properties"]["PolicyDocument"])]
    (read,) = managed["Properties"]["PolicyDocument"]["Statement"]
    assert (read["Sid"], read["Effect"], read["Action"]) == ("ReadHubSecrets", "Allow", "secretsmanager:GetSecretValue")
    # The secret's ARN is its name, a hyphen and 6 random characters: exactly that one secret.
    assert join_text(read["Resource"][0]) == (
        f"arn:aws:secretsmanager:us-east-1:111111111111:secret:{name}-??????"
    )


def test_hub_makes_access_points_only_on_the_homes_file_system_and_only_tagged_as_its_own(hub):
    """Exactly what EC2Spawner.home_access_point calls, in a managed policy of its own on the hub
    role, and nothing else of EFS anywhere in the hub's policies."""
    synth, statements, hub_id = hub
    assert not [s for s in statements.values() if "elasticfilesystem" in str(s["Action"])]
    (homes,) = synth.resources("AWS::EFS::FileSystem")
    # Built from the file system's id (its Arn attribute is the same value, which the sandbox's
    # emulator cannot read).
    homes_arn = f"arn:aws:elasticfilesystem:us-east-1:111111111111:file-system/{{{homes}}}"
    (policy,) = [p["Properties"] for p in synth.resources("AWS::IAM::ManagedPolicy").values()
                 if "access points" in p["Properties"]["Description"]]
    assert policy["Roles"] == [{"Ref": role(synth, "ec2hub hub host")}]
    efs = {s["Sid"]: s for s in copy.deepcopy(policy["PolicyDocument"]["Statement"])}
    assert join_text(efs["TagHomeAccessPointsAtCreation"]["Resource"]) == (
        "arn:aws:elasticfilesystem:us-east-1:111111111111:access-point/*")
    assert join_text(efs["CheckHomeAccessPoints"]["Resource"]) == (
        "arn:aws:elasticfilesystem:us-east-1:111111111111:access-point/*")
    efs["TagHomeAccessPointsAtCreation"]["Resource"] = "<access points>"
    efs["CheckHomeAccessPoints"]["Resource"] = "<access points>"
    for sid in ("CreateHomeAccessPoints", "FindHomeAccessPoints"):
        efs[sid]["Resource"] = join_text(efs[sid]["Resource"])
    assert efs == {
        "CreateHomeAccessPoints": {
            "Sid": "CreateHomeAccessPoints", "Effect": "Allow",
            "Action": "elasticfilesystem:CreateAccessPoint", "Resource": homes_arn,
            "Condition": {
                "StringEquals": {"aws:RequestTag/ec2hub:hub": hub_id},
                "ForAllValues:StringEquals": {"aws:TagKeys": ["ec2hub:hub", "ec2hub:unix-user", "Name"]},
            },
        },
        "TagHomeAccessPointsAtCreation": {
            "Sid": "TagHomeAccessPointsAtCreation", "Effect": "Allow",
            "Action": "elasticfilesystem:TagResource", "Resource": "<access points>",
            "Condition": {"StringEquals": {"elasticfilesystem:CreateAction": "CreateAccessPoint",
                                           "aws:RequestTag/ec2hub:hub": hub_id}},
        },
        "FindHomeAccessPoints": {
            "Sid": "FindHomeAccessPoints", "Effect": "Allow",
            "Action": "elasticfilesystem:DescribeAccessPoints", "Resource": homes_arn,
        },
        "CheckHomeAccessPoints": {
            "Sid": "CheckHomeAccessPoints", "Effect": "Allow",
            "Action": "elasticfilesystem:DescribeAccessPoints", "Resource": "<access points>",
            "Condition": {"StringEquals": {"aws:ResourceTag/ec2hub:hub": hub_id}},
        },
    }
