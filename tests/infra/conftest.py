"""Synthesized ec2hub stacks shared by the infra tests (each synth costs about a second)."""

from __future__ import annotations

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


def synth(tmp_path_factory: pytest.TempPathFactory, context: dict[str, Any]) -> Synth:
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = infra.build_app(context, outdir=outdir)
    (stack,) = app.synth().stacks
    return Synth(context, stack.template, Template.from_json(stack.template), outdir)


def write_catalog(
    directory: Path, catalog: dict[str, Any], name: str = "classes.yaml"
) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def default_synth(tmp_path_factory) -> Synth:
    """The repo as it is: instance-classes.yaml and cdk.json's defaults (plain HTTP, no endpoints)."""
    return synth(tmp_path_factory, {})


@pytest.fixture(scope="session")
def full_synth(tmp_path_factory) -> Synth:
    """HTTPS, VPC endpoints, an admin, a spot class and a literal AMI."""
    catalog = write_catalog(tmp_path_factory.mktemp("catalog"), FULL_CATALOG)
    return synth(tmp_path_factory, {**FULL_CONTEXT, "catalog": str(catalog)})


@pytest.fixture(scope="session", params=["default", "full"])
def any_synth(request) -> Synth:
    return request.getfixturevalue(f"{request.param}_synth")
