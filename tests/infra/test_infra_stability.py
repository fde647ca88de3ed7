"""Editing the catalog touches only what it must: logical ids are stable per class slug."""

from __future__ import annotations

import copy

import pytest
import yaml
from infra_testing import (
    REPO,
    logical_id_by_description,
    notebook_templates,
    required_context,
    synth,
    write_catalog,
)

import infra
from infra.config import ConfigError


def base_catalog():
    return yaml.safe_load((REPO / "instance-classes.yaml").read_text())


def synth_catalog(tmp_path_factory, catalog, name):
    path = write_catalog(tmp_path_factory.mktemp(name), catalog)
    return synth(tmp_path_factory, {"catalog": str(path)})


@pytest.fixture(scope="module")
def base(default_synth):
    """The repo's catalog as it is: the session's default synth, not a second one."""
    return default_synth


def test_adding_a_class_adds_exactly_one_launch_template(tmp_path_factory, base):
    catalog = base_catalog()
    catalog["classes"].append(
        {
            "slug": "tiny",
            "display_name": "Tiny",
            "instance_types": ["t3.micro"],
            "volume_gb": 8,
        }
    )
    added = synth_catalog(tmp_path_factory, catalog, "added")
    before, after = notebook_templates(base), notebook_templates(added)
    assert set(before) < set(after)
    (new_id,) = set(after) - set(before)
    assert after[new_id]["Properties"]["LaunchTemplateName"] == "ec2hub-ec2hub-tiny"
    for logical_id, template in before.items():
        assert after[logical_id] == template
    assert len(added.template["Resources"]) - len(base.template["Resources"]) == len(
        [k for k in added.template["Resources"] if k not in base.template["Resources"]]
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("instance_types", ["m7i.8xlarge", "m6i.8xlarge"]), ("volume_gb", 250)],
)
def test_editing_a_class_changes_only_its_own_template(
    tmp_path_factory, base, field, value
):
    catalog = copy.deepcopy(base_catalog())
    (large,) = [c for c in catalog["classes"] if c["slug"] == "large-cpu"]
    large[field] = value
    edited = synth_catalog(tmp_path_factory, catalog, f"edit-{field}")
    before, after = notebook_templates(base), notebook_templates(edited)
    assert set(before) == set(after)
    changed = [k for k in before if before[k] != after[k]]
    assert len(changed) == 1
    assert (
        after[changed[0]]["Properties"]["LaunchTemplateName"]
        == "ec2hub-ec2hub-large-cpu"
    )
    # Same logical id: CloudFormation updates the template in place (a new version, same id).
    data = after[changed[0]]["Properties"]["LaunchTemplateData"]
    if field == "instance_types":
        assert data["InstanceType"] == "m7i.8xlarge"
    else:
        assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 250
    # Nothing but the class's template and the settings document differs, and for new instance
    # types the hub policy, which allows RunInstances only with the catalog's types.
    differing = {
        k
        for k in base.template["Resources"]
        if base.template["Resources"][k] != edited.template["Resources"].get(k)
    }
    expected = {changed[0], *edited.resources("AWS::SSM::Parameter")}
    if field == "instance_types":
        hub_role = logical_id_by_description(
            edited, "AWS::IAM::Role", "ec2hub hub host"
        )
        (hub_policy,) = [
            k
            for k, v in edited.resources("AWS::IAM::Policy").items()
            if {"Ref": hub_role} in v["Properties"]["Roles"]
        ]
        expected.add(hub_policy)
    assert differing == expected


def test_many_classes_keep_the_hub_policy_inline_and_the_settings_in_one_parameter(
    tmp_path_factory,
):
    """The hub policy lists template ARNs once, so it does not overflow into managed policies."""
    classes = [
        {
            "slug": f"c{i}",
            "display_name": f"Class {i}",
            "instance_types": ["t3.medium"],
            "ami": "ami-0123456789abcdef0",
            "default": i == 0,
        }
        for i in range(20)
    ]
    result = synth_catalog(
        tmp_path_factory, {**base_catalog(), "classes": classes}, "many"
    )
    assert len(notebook_templates(result)) == 20
    # The managed policies are the hub's secrets', DNS record's, signal's and access points' own (infra/stack.py),
    # never CDK's overflow.
    managed = result.resources("AWS::IAM::ManagedPolicy").values()
    assert sorted(p["Properties"]["Description"] for p in managed) == [
        "ec2hub hub host: make and find its users' home access points on EFS",
        "ec2hub hub host: point the hub API's DNS name at itself",
        "ec2hub hub host: read its own four secrets",
        "ec2hub hub host: signal to CloudFormation that a new hub answers",
    ]
    (parameter,) = result.resources("AWS::SSM::Parameter").values()
    assert parameter["Properties"]["Tier"] == "Advanced"


def test_settings_too_big_for_ssm_is_a_one_line_error(tmp_path):
    classes = [
        {
            "slug": f"c{i}",
            "display_name": f"Class {i}",
            "description": "d" * 400,
            "instance_types": ["t3.medium"],
            "default": i == 0,
        }
        for i in range(30)
    ]
    path = write_catalog(tmp_path, {**base_catalog(), "classes": classes})
    with pytest.raises(
        ConfigError,
        match=r"^the hub settings would be about \d+ bytes, but an SSM parameter",
    ):
        infra.build_app(required_context({"catalog": str(path)}))
