"""Shared by the infra tests: synthesizing the stack and reading the template by what things are.

Finders never use hashed logical ids: they look resources up by type and by their descriptions.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aws_cdk.assertions import Template

import infra

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "111111111111"
REGION = "us-east-1"
CERT = (
    f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0f1e2d3c-aaaa-bbbb-cccc-000000000000"
)

# A catalog exercising what the repo's does not: a spot class and a literal AMI id.
FULL_CATALOG = {
    "defaults": {
        "ami": "ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    },
    "classes": [
        {
            "slug": "small",
            "display_name": "Small",
            "instance_types": ["t3.medium"],
            "default": True,
        },
        {
            "slug": "spot-gpu",
            "display_name": "Spot GPU",
            "instance_types": ["g5.xlarge", "g6.xlarge"],
            "ami": "ami-0123456789abcdef0",
            "volume_gb": 120,
            "market": "spot",
            "allowed_groups": ["gpu-users"],
        },
    ],
}
FULL_CONTEXT = {
    "hub_id": "research",
    "vpc_endpoints": True,
    "nat_gateways": 2,
    "certificate_arn": CERT,
    "domain_name": "hub.example.org",
    "admin_user": "alice",
    "hub_instance_type": "m7i.large",
    "group_budgets_usd": "gpu-users=500,research=120.5",  # as -c gives it
    "alarm_email": "ops@example.org",
    "log_retention_days": "365",
    "hub_dns_zone": "research.corp.internal",
}

# Sign-in through the stack's own Cognito user pool (infra/identity.py).
COGNITO_CONTEXT = {
    "auth": "cognito",
    "certificate_arn": CERT,
    "domain_name": "hub.example.org",
    # Not FULL_CONTEXT's: checkov tells templates apart by file name, which is the stack name.
    "hub_id": "lab",
    "oauth_admin_groups": "hub-admins",
}


@dataclass
class Synth:
    """One synthesized stack: the template as a dict and as an assertions.Template."""

    context: dict[str, Any]
    template: dict[str, Any]
    assertions: Template
    outdir: Path

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {
            k: v
            for k, v in self.template["Resources"].items()
            if v["Type"] == resource_type
        }

    def metadata(self) -> dict[str, list[dict[str, Any]]]:
        """Construct metadata of the stack (warnings, acknowledgments) from the cloud assembly."""
        (path,) = self.outdir.glob("*.metadata.json")
        return json.loads(path.read_text())

    def validation_report(self) -> dict[str, Any]:
        return json.loads((self.outdir / "validation-report.json").read_text())

    def aws_solutions_report(self) -> dict[str, Any]:
        """cdk-nag's AwsSolutions plugin report from the validation report."""
        (report,) = [
            r
            for r in self.validation_report()["pluginReports"]
            if r["pluginName"] == "AwsSolutions"
        ]
        return report


# A catalog with a class in another account and region (catalog ``targets``).
TARGET_ACCOUNT = "222222222222"
TARGET_REGION = "eu-central-1"
TARGET_ROLE = f"arn:aws:iam::{TARGET_ACCOUNT}:role/ec2hub-research"
TARGET_EXTERNAL_ID = "ec2hub-research-7f3a"
HUB_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ec2hub-HubRole-0123456789AB"
TARGET_CATALOG = {
    **FULL_CATALOG,
    "targets": {"research": {"account": TARGET_ACCOUNT, "region": TARGET_REGION, "role_arn": TARGET_ROLE,
                             "external_id": TARGET_EXTERNAL_ID}},
    "classes": [
        *FULL_CATALOG["classes"],
        {"slug": "research-gpu", "display_name": "Research GPU (account B)", "instance_types": ["g6e.xlarge"],
         "target": "research"},
    ],
}
TARGET_CONTEXT = {
    "target": "research",
    "hub_role_arn": HUB_ROLE,
    "hub_cidr": "10.0.0.0/16",
    f"availability-zones:account={TARGET_ACCOUNT}:region={TARGET_REGION}": [f"{TARGET_REGION}a", f"{TARGET_REGION}b"],
}
# What `cdk deploy -c target=research --outputs-file` writes for that stack.
TARGET_OUTPUTS = {
    "ec2hub-research": {
        "HubAccessRoleArn": TARGET_ROLE,
        "NotebookSubnets": json.dumps({f"{TARGET_REGION}a": "subnet-0b1", f"{TARGET_REGION}b": "subnet-0b2"}),
        "LaunchTemplates": json.dumps({"research-gpu": "lt-0b0b0b0b0b0b0b0b0"}),
        "SecretPrefix": "/ec2hub/ec2hub/servers/",
        "VpcCidr": "10.1.0.0/16",
    }
}

# What every synth must be told: the admin, and HTTPS or an explicit refusal of it.
REQUIRED_CONTEXT = {"admin_user": "admin", "allow_http": True}


def required_context(context: dict[str, Any]) -> dict[str, Any]:
    """``context`` with the required values it lacks (plain HTTP only where no certificate)."""
    base = {"admin_user": REQUIRED_CONTEXT["admin_user"]}
    if "certificate_arn" not in context:
        base["allow_http"] = REQUIRED_CONTEXT["allow_http"]
    return {**base, **context}


def synth(tmp_path_factory: pytest.TempPathFactory, context: dict[str, Any]) -> Synth:
    context = required_context(context)
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = infra.build_app(context, outdir=outdir)
    (stack,) = app.synth().stacks
    return Synth(context, stack.template, Template.from_json(stack.template), outdir)


def notebook_templates(synth: Synth) -> dict[str, dict[str, Any]]:
    """The notebook classes' launch templates (named ``ec2hub-<hub_id>-<slug>``), by logical id."""
    return {
        k: v
        for k, v in synth.resources("AWS::EC2::LaunchTemplate").items()
        if "LaunchTemplateName" in v["Properties"]
    }


def hub_group(synth: Synth) -> tuple[str, dict[str, Any]]:
    """The hub host's Auto Scaling group: (logical id, resource)."""
    ((logical, group),) = synth.resources("AWS::AutoScaling::AutoScalingGroup").items()
    return logical, group


def hub_host(synth: Synth) -> dict[str, Any]:
    """The LaunchTemplateData the hub's group launches its host from."""
    spec = hub_group(synth)[1]["Properties"]["LaunchTemplate"]
    return synth.template["Resources"][spec["LaunchTemplateId"]["Ref"]]["Properties"]["LaunchTemplateData"]


def hub_host_tags(synth: Synth) -> dict[str, Any]:
    """The hub host's instance tags, as its launch template sets them."""
    (spec,) = [t for t in hub_host(synth)["TagSpecifications"] if t["ResourceType"] == "instance"]
    return {t["Key"]: t["Value"] for t in spec["Tags"]}


def write_catalog(
    directory: Path, catalog: dict[str, Any], name: str = "classes.yaml"
) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


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


# The UUID part of the stack id, as infra.admin spells it.
STACK_UUID = {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}


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
    if value == STACK_UUID:
        return "{stack-uuid}"
    raise AssertionError(f"cannot render {value!r}")


def user_data_script(encoded: str) -> bytes:
    """What cloud-init runs for a base64 user-data value: gzip content is unpacked first."""
    payload = base64.b64decode(encoded, validate=True)
    if payload[:2] == b"\x1f\x8b":
        assert len(payload) <= 16 * 1024
        return gzip.decompress(payload)
    return payload


# ARNs of the stack's resources as GetAtt would give them, for linters that need plain strings.
_ARN_FORMATS = {
    "AWS::IAM::Role": "arn:aws:iam::{account}:role/{id}",
    "AWS::IAM::InstanceProfile": "arn:aws:iam::{account}:instance-profile/{id}",
    "AWS::S3::Bucket": "arn:aws:s3:::{id}",
    "AWS::KMS::Key": "arn:aws:kms:{region}:{account}:key/{id}",
    "AWS::Logs::LogGroup": "arn:aws:logs:{region}:{account}:log-group:{id}:*",
    "AWS::DynamoDB::Table": "arn:aws:dynamodb:{region}:{account}:table/{id}",
    "AWS::EFS::FileSystem": "arn:aws:elasticfilesystem:{region}:{account}:file-system/{id}",
    "AWS::ImageBuilder::Component": "arn:aws:imagebuilder:{region}:{account}:component/{id}/1.0.0/1",
    "AWS::ImageBuilder::ImagePipeline": "arn:aws:imagebuilder:{region}:{account}:image-pipeline/{id}",
}


_REF_IS_ARN = {
    "AWS::SecretsManager::Secret": "arn:aws:secretsmanager:{region}:{account}:secret:{id}",
}


def resolve_intrinsics(value: Any, template: dict[str, Any]) -> Any:
    """``value`` with Fn::Join, Ref and GetAtt ... Arn replaced by plausible literal strings."""
    if isinstance(value, list):
        return [resolve_intrinsics(v, template) for v in value]
    if not isinstance(value, dict):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(resolve_intrinsics(p, template) for p in parts)
    if "Ref" in value:
        pseudo = {
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com",
        }
        if value["Ref"] in pseudo:
            return pseudo[value["Ref"]]
        resource_type = template["Resources"].get(value["Ref"], {}).get("Type")
        if resource_type in _REF_IS_ARN:  # Ref of these gives the ARN
            return _REF_IS_ARN[resource_type].format(
                account=ACCOUNT, region=REGION, id=value["Ref"].lower()
            )
        return value["Ref"].lower()
    if value == STACK_UUID:
        return "0f1e2d3c-aaaa-bbbb-cccc-000000000000"
    if "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        resource_type = template["Resources"][logical_id]["Type"]
        if attribute == "Arn":
            return _ARN_FORMATS[resource_type].format(
                account=ACCOUNT, region=REGION, id=logical_id.lower()
            )
        return logical_id.lower()
    return {k: resolve_intrinsics(v, template) for k, v in value.items()}
