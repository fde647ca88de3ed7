"""The hub settings document: the pure builder and the synthesized SSM parameter both parse as HubSettings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ec2spawner.catalog import load_catalog
from ec2spawner.settings import HubSettings
from infra_testing import REPO
from infra_testing import synth as synth_stack

from infra.settings import settings_document

FAKE_IDS = {
    "AWS::EC2::LaunchTemplate": "lt-{:017x}",
    "AWS::EC2::Subnet": "subnet-{:017x}",
    "AWS::EFS::FileSystem": "fs-{:08x}",
    "AWS::DynamoDB::Table": "stack-SpendTable-{:013x}",
    "AWS::Route53::HostedZone": "Z{:020X}",
}


def test_builder_produces_valid_hub_settings():
    catalog = load_catalog(REPO / "instance-classes.yaml")
    document = settings_document(
        region="eu-west-1",
        hub_id="demo",
        subnets={"eu-west-1a": "subnet-0a", "eu-west-1b": "subnet-0b"},
        catalog=catalog,
        launch_template_ids={slug: f"lt-0{i}" for i, slug in enumerate(catalog.slugs)},
        secret_prefix="/ec2hub/demo/servers/",
        efs_id="fs-12345678",
        admin_users=["alice"],
    )
    settings = HubSettings.model_validate(json.loads(json.dumps(document)))
    assert settings.hub_id == "demo" and settings.region == "eu-west-1"
    assert list(settings.subnets) == ["eu-west-1a", "eu-west-1b"]
    assert [c.slug for c in settings.classes] == catalog.slugs
    assert [c.launch_template_id for c in settings.classes] == [
        "lt-00",
        "lt-01",
        "lt-02",
    ]
    for cls, original in zip(settings.classes, catalog.classes):
        assert cls.model_dump(exclude={"launch_template_id"}) == original.model_dump()
    assert settings.secret_prefix == "/ec2hub/demo/servers/"
    assert settings.efs_id == "fs-12345678"
    assert (settings.notebook_port, settings.hub_api_port, settings.proxy_port) == (
        8888,
        8081,
        8000,
    )
    assert settings.auth.type == "native" and settings.auth.admin_users == ["alice"]


def substitute(value: Any, template: dict[str, Any]) -> str:
    """Resolve the parameter's Fn::Join the way CloudFormation would, with fake physical ids."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(substitute(p, template) for p in parts)
    if "Ref" in value:
        logical_id = value["Ref"]
        resource_type = template["Resources"][logical_id]["Type"]
        return FAKE_IDS[resource_type].format(
            sorted(template["Resources"]).index(logical_id)
        )
    raise AssertionError(f"unexpected token in settings: {value!r}")


@pytest.mark.parametrize("name", ["default", "full"])
def test_synthesized_parameter_parses_as_hub_settings(request, name):
    synth = request.getfixturevalue(f"{name}_synth")
    (parameter,) = synth.resources("AWS::SSM::Parameter").values()
    props = parameter["Properties"]
    hub_id = synth.context.get("hub_id", "ec2hub")
    assert props["Name"] == f"/ec2hub/{hub_id}/settings"
    assert props["Type"] == "String"
    text = substitute(props["Value"], synth.template)
    assert len(text) < 4096 and props["Tier"] == "Standard"
    settings = HubSettings.model_validate_json(text)
    assert settings.hub_id == hub_id
    assert settings.secret_prefix == f"/ec2hub/{hub_id}/servers/"
    assert len(settings.subnets) == 2 and all(
        v.startswith("subnet-") for v in settings.subnets.values()
    )
    assert all(c.launch_template_id.startswith("lt-") for c in settings.classes)
    assert settings.efs_id.startswith("fs-")
    expected_admins = (
        [synth.context["admin_user"]] if "admin_user" in synth.context else []
    )
    assert settings.auth.admin_users == expected_admins


def test_limits_culling_and_extra_config_from_ec2hub_yaml_reach_the_settings(tmp_path_factory):
    directory = tmp_path_factory.mktemp("deployment")
    (directory / "ec2hub.yaml").write_text(
        "limits:\n  allow_named_servers: true\n  named_server_limit_per_user: 2\n"
        "culling:\n  idle_timeout: 900\n"
        f"catalog:\n  path: {REPO / 'instance-classes.yaml'}\n"
    )
    (directory / "jupyterhub_config.d").mkdir()
    (directory / "jupyterhub_config.d" / "50-lab.py").write_text("c.Spawner.default_url = '/lab'\n")
    synth = synth_stack(tmp_path_factory, {"config": str(directory / "ec2hub.yaml")})
    (parameter,) = synth.resources("AWS::SSM::Parameter").values()
    settings = HubSettings.model_validate_json(substitute(parameter["Properties"]["Value"], synth.template))
    assert (settings.allow_named_servers, settings.named_server_limit_per_user, settings.idle_timeout_s) == (
        True,
        2,
        900,
    )
    assert settings.extra_config == {"50-lab.py": "c.Spawner.default_url = '/lab'\n"}
