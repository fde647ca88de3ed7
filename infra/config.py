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
    # Sign-in (infra/identity.py): which identity provider, and what the hub needs to know of it.
    "auth",
    "oauth_client_id",
    "oidc_authorize_url",
    "oidc_token_url",
    "oidc_userinfo_url",
    "oidc_scopes",
    "oidc_username_claim",
    "oauth_groups_claim",
    "oauth_allowed_groups",
    "oauth_admin_groups",
    "oauth_allow_all",
    "github_organizations",
    "google_domains",
    "cognito_domain_prefix",
)

AUTH_TYPES = ("native", "github", "google", "oidc", "cognito")

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
_ADMIN_USER = re.compile(r"^[A-Za-z0-9._@+=,-]{1,128}$")
_HTTPS_URL = re.compile(r"^https://[^\s/?#]+(/[^\s]*)?$")
# Cognito domain prefixes: lowercase letters, digits and hyphens, not starting or ending with a
# hyphen, and without the reserved words (Cognito developer guide, "Using the Amazon Cognito domain").
_COGNITO_PREFIX = re.compile(r"^(?!.*(aws|amazon|cognito))[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_NAME = re.compile(r"^[^\s,]{1,255}$")


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
    # Sign-in: "native" (NativeAuthenticator), or an identity provider through oauthenticator.
    auth: str = "native"
    oauth_client_id: str | None = None
    oidc_authorize_url: str | None = None
    oidc_token_url: str | None = None
    oidc_userinfo_url: str | None = None
    oidc_scopes: tuple[str, ...] = ("openid", "profile", "email")
    oidc_username_claim: str = "preferred_username"
    oauth_groups_claim: str = "groups"
    oauth_allowed_groups: tuple[str, ...] = ()
    oauth_admin_groups: tuple[str, ...] = ()
    oauth_allow_all: bool = False
    github_organizations: tuple[str, ...] = ()
    google_domains: tuple[str, ...] = ()
    # None: ec2hub-<hub_id>-<account> (the prefix is unique per region across all accounts).
    cognito_domain_prefix: str | None = None

    @property
    def oauth(self) -> bool:
        """Sign-in through an identity provider (a client secret in Secrets Manager)."""
        return self.auth != "native"

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


def _names(context: dict[str, Any], key: str, pattern: re.Pattern[str] = _NAME) -> tuple[str, ...]:
    """A list given as a JSON list (cdk.json) or as comma- or space-separated text (``-c``)."""
    value = context.get(key)
    if value is None or value == "":
        return ()
    items = value if isinstance(value, list) else re.split(r"[,\s]+", str(value).strip())
    names = tuple(str(item).strip() for item in items if str(item).strip())
    for name in names:
        if not pattern.match(name):
            raise ConfigError(f"context {key}: {name!r} is not a name (no spaces or commas)")
    return names


def _auth_fields(context: dict[str, Any]) -> dict[str, Any]:
    """The sign-in knobs, each checked; what each provider requires is checked in config_from_context."""
    auth = _text(context, "auth") or "native"
    if auth not in AUTH_TYPES:
        raise ConfigError(f"context auth: {auth!r} is not one of {', '.join(AUTH_TYPES)}")
    fields: dict[str, Any] = {
        "auth": auth,
        "oauth_client_id": _checked(context, "oauth_client_id", _NAME, "an OAuth client id"),
        "oauth_groups_claim": _checked(context, "oauth_groups_claim", _NAME, "a claim name") or "groups",
        "oidc_username_claim": _checked(context, "oidc_username_claim", _NAME, "a claim name")
        or "preferred_username",
        "oidc_scopes": _names(context, "oidc_scopes") or ("openid", "profile", "email"),
        "oauth_allowed_groups": _names(context, "oauth_allowed_groups"),
        "oauth_admin_groups": _names(context, "oauth_admin_groups"),
        "oauth_allow_all": _bool(context, "oauth_allow_all", False),
        "github_organizations": _names(context, "github_organizations"),
        "google_domains": _names(context, "google_domains"),
        "cognito_domain_prefix": _checked(
            context, "cognito_domain_prefix", _COGNITO_PREFIX,
            "a Cognito domain prefix (lowercase letters, digits, hyphens; no aws, amazon or cognito)",
        ),
    }
    for key in ("oidc_authorize_url", "oidc_token_url", "oidc_userinfo_url"):
        fields[key] = _checked(context, key, _HTTPS_URL, "an https:// URL")
    return fields


def _check_provider(config: HubConfig) -> None:
    """What the chosen identity provider needs: one line naming the first missing context value."""
    if config.auth in ("github", "google", "oidc") and config.oauth_client_id is None:
        raise ConfigError(
            f"context oauth_client_id: required with auth={config.auth}: the client id of the OAuth "
            "app registered with the provider (its secret goes into Secrets Manager after deploy)"
        )
    if config.auth == "oidc":
        for key in ("oidc_authorize_url", "oidc_token_url", "oidc_userinfo_url"):
            if getattr(config, key) is None:
                raise ConfigError(
                    f"context {key}: required with auth=oidc: the provider's endpoint (its "
                    "/.well-known/openid-configuration lists them)"
                )
    if config.auth == "google" and (config.oauth_allowed_groups or config.oauth_admin_groups):
        raise ConfigError(
            "context oauth_allowed_groups: Google's tokens carry no groups: use google_domains, "
            "oauth_allow_all or admin_user (groups are managed in the hub)"
        )
    who = {
        "github": bool(config.github_organizations or config.oauth_allowed_groups),
        "google": bool(config.google_domains),
        "oidc": bool(config.oauth_allowed_groups),
    }
    if config.auth in who and not (who[config.auth] or config.oauth_allow_all):
        allow = {"github": "github_organizations or oauth_allowed_groups", "google": "google_domains",
                 "oidc": "oauth_allowed_groups"}[config.auth]
        raise ConfigError(
            f"context {allow.split()[0]}: required with auth={config.auth}: say who may sign in "
            f"({allow}), or -c oauth_allow_all=true for everyone the provider signs in"
        )


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
        **_auth_fields(context),
    )
    # Checked after every value parsed, so a malformed value is reported as such first.
    if config.admin_user is None:
        raise ConfigError(
            "context admin_user: required: the user name of the hub's first admin "
            "(-c admin_user=<name>)"
        )
    _check_provider(config)
    if config.auth == "cognito" and not config.https:
        # Cognito accepts plain-HTTP callback URLs only for localhost.
        raise ConfigError(
            "context certificate_arn: required with auth=cognito: Cognito sends users back only to "
            "an https:// callback URL (-c certificate_arn=arn:aws:acm:...)"
        )
    if not config.https and not config.allow_http:
        raise ConfigError(
            "context certificate_arn: required: an ACM certificate ARN for HTTPS "
            "(-c certificate_arn=arn:aws:acm:...), or -c allow_http=true to serve plain HTTP"
        )
    return config
