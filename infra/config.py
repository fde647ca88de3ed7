"""The deployment's knobs: CDK context values, read and checked once, in one place.

Every value comes from CDK context (`cdk synth -c key=value`, `cdk.json`, or the dict given to
:func:`infra.build_app`). Values given with `-c` on the command line arrive as strings, so numbers
and booleans are parsed here. A bad value raises :class:`ConfigError` with a one-line message that
names the context key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_HUB_ID = "ec2hub"
# A placeholder account: `cdk synth` works offline with it because cdk.json pins its AZs.
DEFAULT_ACCOUNT = "111111111111"
DEFAULT_REGION = "us-east-1"
DEFAULT_HUB_INSTANCE_TYPE = "t3.medium"

# Every context key config_from_context() reads (build_app looks each one up in the CDK context).
CONTEXT_KEYS = (
    "hub_id",
    "account",
    "region",
    "catalog",
    "nat_gateways",
    "vpc_endpoints",
    "certificate_arn",
    "allow_http",
    "domain_name",
    "admin_user",
    "hub_instance_type",
    "hub_ami",
    "allowed_ingress_cidr",
    "image_versions_kept",
    "image_build_schedule",
)

# hub_id is the stack name and appears in SSM paths, tags and resource names.
_HUB_ID = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")
_ACCOUNT = re.compile(r"^[0-9]{12}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
_CERT_ARN = re.compile(
    r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[A-Za-z0-9-]+$"
)
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
# JupyterHub user names are free-form, but this one lands in an EC2 tag read through IMDS.
_AMI = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")
# Image Builder schedules are cron expressions (Image Builder user guide, "Use cron expressions").
_CRON = re.compile(r"^cron\([0-9A-Za-z*?/,#\- ]{9,200}\)$")
_ADMIN_USER = re.compile(r"^[A-Za-z0-9._@+=,-]{1,128}$")


class ConfigError(ValueError):
    """A context value or an input file is unusable (one-line message naming the key or file)."""


@dataclass(frozen=True)
class HubConfig:
    hub_id: str = DEFAULT_HUB_ID
    account: str = DEFAULT_ACCOUNT
    region: str = DEFAULT_REGION
    catalog_path: Path = REPO_ROOT / "instance-classes.yaml"
    nat_gateways: int = 1
    vpc_endpoints: bool = False
    certificate_arn: str | None = None
    allow_http: bool = False
    domain_name: str | None = None
    admin_user: str | None = None
    hub_instance_type: str = DEFAULT_HUB_INSTANCE_TYPE
    # The hub's AMI id; None: the AL2023 image cached in cdk.context.json (infra.hub.hub_image).
    hub_ami: str | None = None
    allowed_ingress_cidr: str = "0.0.0.0/0"
    # Baked classes (infra/images.py): images kept per class by the lifecycle policy (the newest
    # is the one in use; the others are for rollback), and when to rebuild (only if the base
    # image changed). None: built when the stack creates or changes the recipe, and by hand.
    image_versions_kept: int = 3
    image_build_schedule: str | None = None

    @property
    def https(self) -> bool:
        return self.certificate_arn is not None

    @property
    def ssm_prefix(self) -> str:
        """Every SSM parameter of this hub lives under this path."""
        return f"/ec2hub/{self.hub_id}/"

    @property
    def lease_table_name(self) -> str:
        """The DynamoDB table of the hub lease (one item: this hub's)."""
        return f"ec2hub-{self.hub_id}-lease"

    @property
    def settings_parameter_name(self) -> str:
        return f"{self.ssm_prefix}settings"

    @property
    def secret_prefix(self) -> str:
        """Per-server secret env parameters: ``<secret_prefix><instance-id>``."""
        return f"{self.ssm_prefix}servers/"


def _text(context: dict[str, Any], key: str) -> str | None:
    value = context.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"context {key}: must be a string, got {value!r}")
    return value.strip()


def _checked(
    context: dict[str, Any], key: str, pattern: re.Pattern[str], what: str
) -> str | None:
    value = _text(context, key)
    if value is not None and not pattern.match(value):
        raise ConfigError(f"context {key}: {value!r} is not {what}")
    return value


def _bool(context: dict[str, Any], key: str, default: bool) -> bool:
    value = context.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {
        "true",
        "false",
        "1",
        "0",
        "yes",
        "no",
    }:
        return value.lower() in {"true", "1", "yes"}
    raise ConfigError(f"context {key}: {value!r} is not true or false")


def _int(context: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = context.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"context {key}: {value!r} is not a whole number") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise ConfigError(f"context {key}: {value!r} must be between {low} and {high}")
    return number


def config_from_context(context: dict[str, Any]) -> HubConfig:
    """Parse and check the context values this app understands; defaults for the rest.

    ``admin_user`` is required, and so is ``certificate_arn`` unless ``allow_http`` is true: the
    hub takes passwords, so plain HTTP must be asked for by name.
    """
    cidr = _text(context, "allowed_ingress_cidr") or "0.0.0.0/0"
    try:
        # The load balancer is IPv4 (the VPC has no IPv6 block).
        cidr = str(ipaddress.IPv4Network(cidr, strict=True))
    except ValueError:
        raise ConfigError(
            f"context allowed_ingress_cidr: {cidr!r} is not an IPv4 network (a.b.c.d/n)"
        ) from None
    hub_type = _text(context, "hub_instance_type") or DEFAULT_HUB_INSTANCE_TYPE
    from ec2spawner.catalog import ec2_instance_types

    if hub_type not in ec2_instance_types():
        raise ConfigError(
            f"context hub_instance_type: {hub_type!r} is not an EC2 instance type"
        )
    catalog = _text(context, "catalog")
    config = HubConfig(
        hub_id=_checked(
            context, "hub_id", _HUB_ID, "a stack name ([A-Za-z][A-Za-z0-9-]*)"
        )
        or DEFAULT_HUB_ID,
        account=_checked(context, "account", _ACCOUNT, "a 12-digit account id")
        or DEFAULT_ACCOUNT,
        region=_checked(context, "region", _REGION, "an AWS region") or DEFAULT_REGION,
        catalog_path=Path(catalog) if catalog else REPO_ROOT / "instance-classes.yaml",
        nat_gateways=_int(context, "nat_gateways", 1, 1, 2),  # one per AZ at most
        vpc_endpoints=_bool(context, "vpc_endpoints", False),
        certificate_arn=_checked(
            context, "certificate_arn", _CERT_ARN, "an ACM certificate ARN"
        ),
        domain_name=_checked(context, "domain_name", _DOMAIN, "a DNS name"),
        admin_user=_checked(context, "admin_user", _ADMIN_USER, "a plain user name"),
        hub_instance_type=hub_type,
        hub_ami=_checked(context, "hub_ami", _AMI, "an AMI id (ami-...)"),
        allowed_ingress_cidr=cidr,
        allow_http=_bool(context, "allow_http", False),
        image_versions_kept=_int(context, "image_versions_kept", 3, 1, 100),
        image_build_schedule=_checked(
            context, "image_build_schedule", _CRON, "an Image Builder cron expression (cron(...))"
        ),
    )
    # Checked after every value parsed, so a malformed value is reported as such first.
    if config.admin_user is None:
        raise ConfigError(
            "context admin_user: required: the user name of the hub's first admin "
            "(-c admin_user=<name>)"
        )
    if not config.https and not config.allow_http:
        raise ConfigError(
            "context certificate_arn: required: an ACM certificate ARN for HTTPS "
            "(-c certificate_arn=arn:aws:acm:...), or -c allow_http=true to serve plain HTTP"
        )
    return config
