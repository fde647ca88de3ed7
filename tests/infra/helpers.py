"""Small readers over a synthesized template: find resources by what they are, never by hashed id."""

from __future__ import annotations

import base64
import gzip
from typing import Any

from conftest import Synth


def logical_id_by_description(
    synth: Synth, resource_type: str, fragment: str, key: str = "Description"
) -> str:
    """The one resource of a type whose description (or other text property) contains ``fragment``."""
    found = [
        k
        for k, v in synth.resources(resource_type).items()
        if fragment in v["Properties"].get(key, "")
    ]
    assert len(found) == 1, (
        f"{resource_type} with {key} containing {fragment!r}: {found}"
    )
    return found[0]


def ingress_rules(synth: Synth, group_logical_id: str) -> list[dict[str, Any]]:
    """Every ingress rule of a security group: inline ones and AWS::EC2::SecurityGroupIngress."""
    group = synth.template["Resources"][group_logical_id]["Properties"]
    rules = list(group.get("SecurityGroupIngress", []))
    for resource in synth.resources("AWS::EC2::SecurityGroupIngress").values():
        props = resource["Properties"]
        if props["GroupId"] == {"Fn::GetAtt": [group_logical_id, "GroupId"]}:
            rules.append(props)
    return rules


def group_ref(logical_id: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, "GroupId"]}


def policy_statements(synth: Synth, role_logical_id: str) -> dict[str, dict[str, Any]]:
    """Inline policy statements attached to a role, by Sid (statements without a Sid are skipped)."""
    statements: dict[str, dict[str, Any]] = {}
    for policy in synth.resources("AWS::IAM::Policy").values():
        props = policy["Properties"]
        if {"Ref": role_logical_id} in props.get("Roles", []):
            for statement in props["PolicyDocument"]["Statement"]:
                if "Sid" in statement:
                    statements[statement["Sid"]] = statement
    return statements


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def join_text(value: Any) -> str:
    """Render an ``Fn::Join`` of literals and pseudo-parameters as text, for ARN comparisons."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(join_text(p) for p in parts)
    if value == {"Ref": "AWS::Partition"}:
        return "aws"
    if "Ref" in value:
        return "{" + value["Ref"] + "}"
    if "Fn::GetAtt" in value:
        return "{" + ".".join(value["Fn::GetAtt"]) + "}"
    raise AssertionError(f"cannot render {value!r}")


def user_data_script(encoded: str) -> bytes:
    """What cloud-init runs for a base64 user-data value: gzip content is unpacked first."""
    payload = base64.b64decode(encoded, validate=True)
    if payload[:2] == b"\x1f\x8b":
        assert len(payload) <= 16 * 1024
        return gzip.decompress(payload)
    return payload
