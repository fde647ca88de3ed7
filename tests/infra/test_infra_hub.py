"""The hub instance, its load balancer and the inputs the hub bootstrap reads from its tags."""

from __future__ import annotations

import base64
import json

from aws_cdk.assertions import Match
from ec2spawner.hubconfig import (
    LOAD_BALANCER_IDLE_TIMEOUT_S,
    PROXY_KEEP_ALIVE_TIMEOUT_S,
)
from infra_testing import CERT, join_text, user_data_script

from infra.userdata import assemble_user_data, shipped_text

INSTANCE = "AWS::EC2::Instance"


def hub_instance(synth):
    (instance,) = synth.resources(INSTANCE).values()
    return instance["Properties"]


def test_hub_requires_imdsv2_with_metadata_tags_and_hop_limit_1(any_synth):
    any_synth.assertions.has_resource_properties(
        INSTANCE,
        {
            "MetadataOptions": {
                "HttpEndpoint": "enabled",
                "HttpTokens": "required",
                "HttpPutResponseHopLimit": 1,
                "InstanceMetadataTags": "enabled",
            }
        },
    )


def test_hub_is_private_protected_monitored_and_encrypted(any_synth):
    any_synth.assertions.has_resource_properties(
        INSTANCE,
        {
            "DisableApiTermination": True,
            "Monitoring": True,
            "BlockDeviceMappings": [
                {
                    "DeviceName": "/dev/xvda",
                    "Ebs": Match.object_like({"Encrypted": True, "VolumeType": "gp3"}),
                }
            ],
            "NetworkInterfaces": [
                Match.object_like({"AssociatePublicIpAddress": False})
            ],
        },
    )
    subnet = hub_instance(any_synth)["NetworkInterfaces"][0]["SubnetId"]["Ref"]
    assert "private" in subnet


def test_hub_user_data_is_the_hub_bootstrap_assembled_from_its_files(any_synth):
    encoded = hub_instance(any_synth)["UserData"]
    assert base64.b64decode(encoded) == assemble_user_data("hub").payload
    script = user_data_script(encoded).decode()
    for path in ("hub/user-data.sh", "hub/ec2hub-hub.service", "hub/jupyterhub_config.py", "ec2hub_bootstrap/hub.py"):
        assert shipped_text(path) in script, path
    assert "ec2hub_bootstrap/notebook.py" not in script


def test_hub_tags_name_its_settings_asset_and_admin(full_synth, default_synth):
    tags = {t["Key"]: t["Value"] for t in hub_instance(full_synth)["Tags"]}
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
    default_tags = {t["Key"]: t["Value"] for t in hub_instance(default_synth)["Tags"]}
    assert default_tags["ec2hub:admin-user"] == "admin"


def test_settings_parameter_exists_before_the_hub_boots(any_synth):
    (instance,) = any_synth.resources(INSTANCE).values()
    (parameter_id,) = any_synth.resources("AWS::SSM::Parameter")
    assert parameter_id in instance.get("DependsOn", [])


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
    tags = {t["Key"]: t["Value"] for t in hub_instance(any_synth)["Tags"]}
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
