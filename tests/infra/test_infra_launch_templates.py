"""Every notebook launch template: the security settings cdk-nag does not look at."""

from __future__ import annotations

import base64

from aws_cdk.assertions import Match
from ec2spawner.catalog import load_catalog
from infra_testing import (
    FULL_CATALOG,
    REPO,
    logical_id_by_description,
    notebook_templates,
    user_data_script,
)

from infra.userdata import assemble_user_data, shipped_text

LAUNCH_TEMPLATE = "AWS::EC2::LaunchTemplate"


def test_one_template_per_catalog_class(default_synth):
    catalog = load_catalog(REPO / "instance-classes.yaml")
    names = sorted(
        v["Properties"]["LaunchTemplateName"]
        for v in notebook_templates(default_synth).values()
    )
    assert names == sorted(f"ec2hub-ec2hub-{slug}" for slug in catalog.slugs)


def test_every_template_requires_imdsv2_hop_limit_1_and_metadata_tags(any_synth):
    templates = notebook_templates(any_synth)
    matching = any_synth.assertions.find_resources(
        LAUNCH_TEMPLATE,
        {
            "Properties": {
                "LaunchTemplateData": Match.object_like(
                    {
                        "MetadataOptions": {
                            "HttpEndpoint": "enabled",
                            "HttpTokens": "required",
                            "HttpPutResponseHopLimit": 1,
                            "InstanceMetadataTags": "enabled",
                        }
                    }
                )
            }
        },
    )
    assert templates and set(matching) >= set(templates)


def test_every_template_has_an_encrypted_gp3_root_of_the_class_size(full_synth):
    sizes = {c["slug"]: c.get("volume_gb", 30) for c in FULL_CATALOG["classes"]}
    for slug, size in sizes.items():
        full_synth.assertions.has_resource_properties(
            LAUNCH_TEMPLATE,
            {
                "LaunchTemplateName": f"ec2hub-research-{slug}",
                "LaunchTemplateData": Match.object_like(
                    {
                        "BlockDeviceMappings": [
                            {
                                "DeviceName": "/dev/xvda",
                                "Ebs": {
                                    "VolumeSize": size,
                                    "VolumeType": "gp3",
                                    "Encrypted": True,
                                    "DeleteOnTermination": True,
                                },
                            }
                        ]
                    }
                ),
            },
        )


def test_no_template_can_give_a_notebook_a_public_address(any_synth):
    for template in notebook_templates(any_synth).values():
        data = template["Properties"]["LaunchTemplateData"]
        # Groups by id only: no network interface block that could ask for a public IP.
        assert "NetworkInterfaces" not in data
        assert data["SecurityGroupIds"] == [
            {
                "Fn::GetAtt": [
                    logical_id_by_description(
                        any_synth,
                        "AWS::EC2::SecurityGroup",
                        "notebook servers",
                        key="GroupDescription",
                    ),
                    "GroupId",
                ]
            }
        ]
    # The subnets notebooks may use (settings and IAM) never map public IPs on launch.
    for subnet_id, subnet in any_synth.resources("AWS::EC2::Subnet").items():
        if "private" in subnet_id:
            assert subnet["Properties"]["MapPublicIpOnLaunch"] is False


def test_user_data_is_the_notebook_bootstrap_assembled_from_its_files(any_synth):
    expected = assemble_user_data("notebook")
    for template in notebook_templates(any_synth).values():
        encoded = template["Properties"]["LaunchTemplateData"]["UserData"]
        # gzip-compressed (over EC2's 16 KB raw limit as text), within the limit compressed.
        assert base64.b64decode(encoded) == expected.payload
        script = user_data_script(encoded).decode()
        for path in ("notebook/user-data.sh", "notebook/ec2hub-singleuser.service", "ec2hub_bootstrap/notebook.py"):
            assert shipped_text(path) in script, path
        assert "ec2hub_bootstrap/hub.py" not in script


def test_templates_carry_class_image_type_profile_and_tags(full_synth):
    profile = {
        "Fn::GetAtt": [
            next(iter(full_synth.resources("AWS::IAM::InstanceProfile"))),
            "Arn",
        ]
    }
    full_synth.assertions.has_resource_properties(
        LAUNCH_TEMPLATE,
        {
            "LaunchTemplateName": "ec2hub-research-spot-gpu",
            "LaunchTemplateData": Match.object_like(
                {
                    "ImageId": "ami-0123456789abcdef0",
                    "InstanceType": "g5.xlarge",
                    "IamInstanceProfile": {"Arn": profile},
                    "InstanceInitiatedShutdownBehavior": "terminate",
                    "InstanceMarketOptions": {
                        "MarketType": "spot",
                        "SpotOptions": {
                            "SpotInstanceType": "one-time",
                            "InstanceInterruptionBehavior": "terminate",
                        },
                    },
                    "TagSpecifications": [
                        {
                            "ResourceType": "instance",
                            "Tags": [
                                {"Key": "ec2hub:hub", "Value": "research"},
                                {"Key": "ec2hub:class", "Value": "spot-gpu"},
                            ],
                        },
                        {
                            "ResourceType": "volume",
                            "Tags": [
                                {"Key": "ec2hub:hub", "Value": "research"},
                                {"Key": "ec2hub:class", "Value": "spot-gpu"},
                            ],
                        },
                    ],
                }
            ),
        },
    )


def test_ssm_amis_resolve_at_deploy_time_and_on_demand_has_no_market_options(
    full_synth,
):
    (template,) = [
        t
        for t in notebook_templates(full_synth).values()
        if t["Properties"]["LaunchTemplateName"] == "ec2hub-research-small"
    ]
    data = template["Properties"]["LaunchTemplateData"]
    assert "InstanceMarketOptions" not in data
    assert data["InstanceInitiatedShutdownBehavior"] == "stop"  # the idle backstop's poweroff keeps the disk
    parameter = full_synth.template["Parameters"][data["ImageId"]["Ref"]]
    assert parameter["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert (
        parameter["Default"]
        == "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    )


def test_latest_template_version_is_made_the_default(default_synth):
    """CloudFormation adds a version on update but leaves $Default alone: a custom resource moves it."""
    templates = notebook_templates(default_synth)
    calls = [r["Properties"] for r in default_synth.resources("Custom::AWS").values()]
    for logical_id in templates:
        update = [
            c["Update"]
            for c in calls
            if {"Ref": logical_id} in c["Update"]["Fn::Join"][1]
        ]
        assert len(update) == 1
        parts = update[0]["Fn::Join"][1]
        assert '"action":"modifyLaunchTemplate"' in parts[0]
        assert {"Fn::GetAtt": [logical_id, "LatestVersionNumber"]} in parts


def test_default_version_lambda_waits_for_its_role(default_synth):
    functions = default_synth.resources("AWS::Lambda::Function")
    assert len(functions) == 1
    (function,) = functions.values()
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    assert default_synth.template["Resources"][role_id]["Type"] == "AWS::IAM::Role"
    # Each call's own policy (ModifyLaunchTemplate on its template) exists before the call runs.
    for call in default_synth.resources("Custom::AWS").values():
        (policy_id,) = call["DependsOn"]
        statement = default_synth.template["Resources"][policy_id]["Properties"][
            "PolicyDocument"
        ]["Statement"]
        assert [s["Action"] for s in statement] == ["ec2:ModifyLaunchTemplate"]
