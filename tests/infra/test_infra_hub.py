"""The hub host's group of one, its launch template, its load balancer and the inputs the hub
bootstrap reads from its tags."""

from __future__ import annotations

import base64
import json

from aws_cdk.assertions import Match
from ec2spawner.hubconfig import (
    LOAD_BALANCER_IDLE_TIMEOUT_S,
    PROXY_KEEP_ALIVE_TIMEOUT_S,
)
from infra_testing import (
    CERT,
    hub_group,
    hub_host,
    hub_host_tags,
    join_text,
    logical_id_by_description,
    user_data_script,
)

from infra.hub import HUB_HEALTH_CHECK_GRACE_S
from infra.userdata import assemble_user_data, shipped_text

GROUP = "AWS::AutoScaling::AutoScalingGroup"


def test_hub_host_requires_imdsv2_with_metadata_tags_and_hop_limit_1(any_synth):
    assert hub_host(any_synth)["MetadataOptions"] == {
        "HttpEndpoint": "enabled",
        "HttpTokens": "required",
        "HttpPutResponseHopLimit": 1,
        "InstanceMetadataTags": "enabled",
    }


def test_hub_host_is_private_monitored_encrypted_and_has_the_hub_role(any_synth):
    host = hub_host(any_synth)
    assert host["Monitoring"] == {"Enabled": True}
    assert host["BlockDeviceMappings"] == [{
        "DeviceName": "/dev/xvda",
        "Ebs": {"VolumeSize": 30, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True},
    }]
    # No network interface of its own: the group's subnets are private (no public address).
    assert "NetworkInterfaces" not in host
    hub_sg = logical_id_by_description(any_synth, "AWS::EC2::SecurityGroup", "ec2hub hub host", "GroupDescription")
    assert host["SecurityGroupIds"] == [{"Fn::GetAtt": [hub_sg, "GroupId"]}]
    profile = host["IamInstanceProfile"]["Arn"]["Fn::GetAtt"]
    assert profile[1] == "Arn"
    role = logical_id_by_description(any_synth, "AWS::IAM::Role", "ec2hub hub host")
    assert any_synth.template["Resources"][profile[0]]["Properties"]["Roles"] == [{"Ref": role}]
    group = hub_group(any_synth)[1]["Properties"]
    assert all("private" in subnet["Ref"] for subnet in group["VPCZoneIdentifier"])
    assert len(group["VPCZoneIdentifier"]) >= 2  # across the hub subnets: another AZ if one is lost


def test_hub_is_a_group_of_exactly_one_in_the_target_group_checked_by_the_load_balancer(any_synth):
    _, group = hub_group(any_synth)
    (tg,) = any_synth.resources("AWS::ElasticLoadBalancingV2::TargetGroup")
    (template,) = [k for k, v in any_synth.resources("AWS::EC2::LaunchTemplate").items()
                   if "LaunchTemplateName" not in v["Properties"]]
    assert {k: v for k, v in group["Properties"].items() if k != "VPCZoneIdentifier"} == {
        "MinSize": "1",
        "MaxSize": "1",
        "DesiredCapacity": "1",
        "LaunchTemplate": {"LaunchTemplateId": {"Ref": template},
                           "Version": {"Fn::GetAtt": [template, "LatestVersionNumber"]}},
        "TargetGroupARNs": [{"Ref": tg}],
        "HealthCheckType": "ELB",
        "HealthCheckGracePeriod": HUB_HEALTH_CHECK_GRACE_S,
    }
    # No instance target: the group registers its instance.
    assert "Targets" not in any_synth.template["Resources"][tg]["Properties"]
    assert not any_synth.resources("AWS::EC2::Instance")


def test_a_replacement_hub_must_signal_before_the_old_group_is_deleted(any_synth):
    """WillReplace: a changed launch template makes a new group, which CloudFormation accepts only
    once its host signalled (the hub answers); the old group and its hub go in the cleanup after."""
    logical, group = hub_group(any_synth)
    assert group["CreationPolicy"] == {
        "ResourceSignal": {"Count": 1, "Timeout": "PT20M"},
        "AutoScalingCreationPolicy": {"MinSuccessfulInstancesPercent": 100},
    }
    assert group["UpdatePolicy"] == {
        "AutoScalingReplacingUpdate": {"WillReplace": True},
        "AutoScalingScheduledAction": {"IgnoreUnmodifiedGroupSizeProperties": True},
    }
    hub_id = any_synth.context.get("hub_id", "ec2hub")
    assert hub_host_tags(any_synth)["ec2hub:cfn-signal"] == f"{hub_id}/{logical}"
    role = logical_id_by_description(any_synth, "AWS::IAM::Role", "ec2hub hub host")
    policy = any_synth.template["Resources"][
        logical_id_by_description(any_synth, "AWS::IAM::ManagedPolicy", "signal to CloudFormation")]["Properties"]
    assert policy["Roles"] == [{"Ref": role}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == "cloudformation:SignalResource"
    assert join_text(statement["Resource"]) == f"arn:aws:cloudformation:us-east-1:111111111111:stack/{hub_id}/*"


def test_hub_user_data_is_the_hub_bootstrap_assembled_from_its_files(any_synth):
    encoded = hub_host(any_synth)["UserData"]
    assert base64.b64decode(encoded) == assemble_user_data("hub").payload
    script = user_data_script(encoded).decode()
    for path in ("hub/user-data.sh", "hub/ec2hub-hub.service", "hub/jupyterhub_config.py", "ec2hub_bootstrap/hub.py"):
        assert shipped_text(path) in script, path
    assert "ec2hub_bootstrap/notebook.py" not in script


def test_hub_tags_name_its_settings_asset_and_admin(full_synth, default_synth):
    tags = hub_host_tags(full_synth)
    assert tags["ec2hub:hub"] == "research"
    assert tags["ec2hub:settings-parameter"] == "/ec2hub/research/settings"
    assert tags["ec2hub:admin-user"] == "alice"
    asset = tags["ec2hub:spawner-asset"]
    assert asset.startswith("s3://cdk-") and asset.endswith(".zip")
    # The zipped directory is the spawner package.
    asset_dirs = [
        p for p in full_synth.outdir.glob("asset.*") if (p / "pyproject.toml").exists()
    ]
    assert asset_dirs and (asset_dirs[0] / "ec2spawner" / "catalog.py").exists()
    assert asset.rsplit("/", 1)[1] == asset_dirs[0].name.removeprefix("asset.") + ".zip"
    assert hub_host_tags(default_synth)["ec2hub:admin-user"] == "admin"
    (volume_tags,) = [t for t in hub_host(full_synth)["TagSpecifications"] if t["ResourceType"] == "volume"]
    assert {t["Key"]: t["Value"] for t in volume_tags["Tags"]} == tags


def test_settings_parameter_exists_before_the_hub_boots(any_synth):
    _, group = hub_group(any_synth)
    (parameter_id,) = any_synth.resources("AWS::SSM::Parameter")
    assert parameter_id in group.get("DependsOn", [])


def test_https_listener_with_certificate_and_http_redirect(full_synth):
    full_synth.assertions.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {"Port": 443, "Protocol": "HTTPS", "Certificates": [{"CertificateArn": CERT}]},
    )
    full_synth.assertions.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {
            "Port": 80,
            "Protocol": "HTTP",
            "DefaultActions": [
                Match.object_like(
                    {
                        "Type": "redirect",
                        "RedirectConfig": Match.object_like(
                            {"Port": "443", "Protocol": "HTTPS"}
                        ),
                    }
                )
            ],
        },
    )
    assert (
        full_synth.template["Outputs"]["HubUrl"]["Value"] == "https://hub.example.org/"
    )


def test_plain_http_without_certificate_warns(default_synth, full_synth):
    listeners = default_synth.resources("AWS::ElasticLoadBalancingV2::Listener")
    assert [l["Properties"]["Protocol"] for l in listeners.values()] == ["HTTP"]
    assert any("plain HTTP" in w for w in warnings(default_synth))
    assert not any("plain HTTP" in w for w in warnings(full_synth))


def warnings(synth):
    metadata = synth.metadata()
    return [
        e["data"]
        for entries in metadata.values()
        for e in entries
        if e["type"] == "aws:cdk:warning"
    ]


def test_load_balancer_is_public_logs_and_checks_hub_health(any_synth):
    any_synth.assertions.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        {
            "Scheme": "internet-facing",
            "LoadBalancerAttributes": Match.array_with(
                [
                    {
                        "Key": "routing.http.drop_invalid_header_fields.enabled",
                        "Value": "true",
                    },
                    {"Key": "access_logs.s3.enabled", "Value": "true"},
                ]
            ),
        },
    )
    (alb,) = any_synth.resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert all("public" in s["Ref"] for s in alb["Properties"]["Subnets"])
    any_synth.assertions.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::TargetGroup",
        {
            "Port": 8000,
            "Protocol": "HTTP",
            "HealthCheckPath": "/hub/ec2hub/health",  # 200 only on the lease holder
            "TargetType": "instance",
        },
    )


def test_outputs_name_hub_url_and_settings_parameter(default_synth):
    outputs = default_synth.template["Outputs"]
    assert outputs["HubUrl"]["Value"]["Fn::Join"][1][0] == "http://"
    (parameter_id,) = default_synth.resources("AWS::SSM::Parameter")
    assert outputs["SettingsParameterName"]["Value"] == {"Ref": parameter_id}


def test_load_balancer_gives_up_on_idle_connections_before_the_proxy(any_synth):
    """The ALB's idle timeout, from the constant the hub config sets the proxy's keep-alive from."""
    any_synth.assertions.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        {
            "LoadBalancerAttributes": Match.array_with(
                [
                    {
                        "Key": "idle_timeout.timeout_seconds",
                        "Value": str(LOAD_BALANCER_IDLE_TIMEOUT_S),
                    }
                ]
            )
        },
    )
    assert PROXY_KEEP_ALIVE_TIMEOUT_S > LOAD_BALANCER_IDLE_TIMEOUT_S


def test_admin_password_is_generated_and_named_to_the_hub(any_synth):
    """A generated password in Secrets Manager, its name in a hub tag and the command in an output."""
    (secret_id,) = [k for k, v in any_synth.resources("AWS::SecretsManager::Secret").items()
                    if "admin-password-" in json.dumps(v["Properties"]["Name"])]
    any_synth.assertions.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {"GenerateSecretString": {"PasswordLength": 32, "ExcludePunctuation": True}},
    )
    secret = any_synth.template["Resources"][secret_id]["Properties"]
    assert "SecretString" not in secret  # no password in the template
    name = join_text(secret["Name"])
    hub_id = any_synth.context.get("hub_id", "ec2hub")
    assert name == f"ec2hub/{hub_id}/admin-password-{{stack-uuid}}"
    tags = hub_host_tags(any_synth)
    assert join_text(tags["ec2hub:admin-password-secret"]) == name
    outputs = any_synth.template["Outputs"]
    assert join_text(outputs["AdminPasswordSecretName"]["Value"]) == name
    command = join_text(outputs["AdminPasswordCommand"]["Value"])
    assert command == (
        "aws secretsmanager get-secret-value --query SecretString --output text "
        f"--region us-east-1 --secret-id {name}"
    )
    # Nothing refers to the secret resource: an emulator that cannot create it deploys the rest.
    text = json.dumps(any_synth.template)
    assert f'"Ref": "{secret_id}"' not in text
    assert f'["{secret_id}",' not in text
