"""The hub instance, its load balancer and the inputs the hub bootstrap reads from its tags."""

from __future__ import annotations

import base64

from aws_cdk.assertions import Match
from infra_testing import CERT, REPO, user_data_script

from infra.userdata import assemble_user_data

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
        assert (REPO / "bootstrap" / path).read_text() in script, path
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
    default_tags = {t["Key"] for t in hub_instance(default_synth)["Tags"]}
    assert "ec2hub:admin-user" not in default_tags


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
            "HealthCheckPath": "/hub/health",
            "TargetType": "instance",
        },
    )


def test_outputs_name_hub_url_and_settings_parameter(default_synth):
    outputs = default_synth.template["Outputs"]
    assert outputs["HubUrl"]["Value"]["Fn::Join"][1][0] == "http://"
    (parameter_id,) = default_synth.resources("AWS::SSM::Parameter")
    assert outputs["SettingsParameterName"]["Value"] == {"Ref": parameter_id}
