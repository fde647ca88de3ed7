"""The deployment's knobs: ``ec2hub.yaml``, overridden by CDK context, read and checked once.

Where a value comes from, the last one winning:

1. the field's default (below);
2. ``ec2hub.yaml`` at the repository root (``-c config=<path>`` names another file), in
   sections: ``hub``, ``network``, ``tls``, ``identity``, ``limits``, ``culling``, ``catalog``;
3. CDK context (``cdk.json``, ``cdk synth -c key=value``, or the dict given to
   :func:`infra.build_app`), keyed by the flat field name: for CI and one-off overrides.

Values given with ``-c`` arrive as strings; numbers and booleans are parsed here. A bad value raises
:class:`ConfigError` with a one-line message naming where it came from, e.g.
``ec2hub.yaml: network.nat_gateways: 5 must be between 1 and 2`` or
``context nat_gateways: '5' must be between 1 and 2``.

Adding a knob is one field on :class:`HubConfig`, declared with :func:`knob` (its section, default
and checks), plus its comment in ``ec2hub.yaml``; the rest of infra reads ``config.<field>``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from ec2spawner.catalog import (
    Catalog,
    CatalogError,
    ec2_instance_types,
    load_catalog,
    parse_catalog,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = REPO_ROOT / "ec2hub.yaml"
DEFAULT_CATALOG_FILE = REPO_ROOT / "instance-classes.yaml"
# Extra JupyterHub config files, next to the configuration file (shipped in the settings document).
EXTRA_CONFIG_DIR = "jupyterhub_config.d"

DEFAULT_HUB_ID = "ec2hub"
# A placeholder account: `cdk synth` works offline with it because cdk.json pins its AZs.
DEFAULT_ACCOUNT = "111111111111"
DEFAULT_REGION = "us-east-1"
DEFAULT_HUB_INSTANCE_TYPE = "t3.medium"
# The hub database's RDS class (without "db."): the smallest Graviton class, plenty for a small
# team's JupyterHub (docs/DEPLOY.md, "What the database costs").
DEFAULT_DATABASE_INSTANCE_TYPE = "t4g.micro"

SECTIONS = ("hub", "network", "tls", "identity", "limits", "culling", "spend", "observability", "database", "images", "catalog")

AUTH_TYPES = ("native", "github", "google", "oidc", "cognito")

# hub_id is the stack name and appears in SSM paths, tags and resource names.
_HUB_ID = r"^[A-Za-z][A-Za-z0-9-]{0,62}$"
_ACCOUNT = r"^[0-9]{12}$"
_REGION = r"^[a-z]{2}(-[a-z]+)+-[0-9]$"
_CERT_ARN = r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[A-Za-z0-9-]+$"
_DOMAIN = r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
_AMI = r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$"
# JupyterHub user names are free-form, but this one lands in an EC2 tag read through IMDS.
_ADMIN_USER = r"^[A-Za-z0-9._@+=,-]{1,128}$"
# A JupyterHub group name as it appears in a budget (no '=' or ',': the -c form separates with them).
_GROUP = re.compile(r"^[^=,\s][^=,]{0,254}$")
_HTTPS_URL = r"^https://[^\s/?#]+(/[^\s]*)?$"
# Cognito domain prefixes: lowercase letters, digits and hyphens, not starting or ending with a
# hyphen, and without the reserved words (Cognito developer guide, "Using the Amazon Cognito domain").
_COGNITO_PREFIX = r"^(?!.*(aws|amazon|cognito))[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
_NAME = r"^[^\s,]{1,255}$"
_NAME_RE = re.compile(_NAME)
AUTH_TYPES = ("native", "github", "google", "oidc", "cognito")
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# The retention periods CloudWatch Logs accepts (PutRetentionPolicy, retentionInDays).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                      2557, 2922, 3288, 3653)
_DB_TYPE = r"^(t4g|t3|m6g|m7g|r6g|r7g|m6i|r6i)\.(micro|small|medium|large|[0-9]*xlarge)$"
# Image Builder schedules are cron expressions (Image Builder user guide, "Use cron expressions").
_CRON = r"^cron\([0-9A-Za-z*?/,#\- ]{9,200}\)$"


class ConfigError(ValueError):
    """A configuration value or an input file is unusable (one-line message naming the key or file)."""


def matches(pattern: str, what: str):
    """A check that a string matches ``pattern``; the error says the value is not ``what``."""
    compiled = re.compile(pattern)

    def check(value: str | None) -> str | None:
        if value is not None and not compiled.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def knob(section: str, default: Any, *, key: str | None = None, **checks: Any) -> Any:
    """A :class:`HubConfig` field: its ``ec2hub.yaml`` section (and key there, default the field
    name), its default, and pydantic's numeric checks (``ge``, ``le``)."""
    assert section in SECTIONS, section
    return Field(default, json_schema_extra={"section": section, "key": key}, **checks)


class HubConfig(BaseModel):
    """Every deployment knob, flat: what the stack's constructs read."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    # -- hub ----------------------------------------------------------------------------------------
    hub_id: Annotated[str, matches(_HUB_ID, "a stack name ([A-Za-z][A-Za-z0-9-]*)")] = knob(
        "hub", DEFAULT_HUB_ID
    )
    account: Annotated[str, matches(_ACCOUNT, "a 12-digit account id")] = knob("hub", DEFAULT_ACCOUNT)
    region: Annotated[str, matches(_REGION, "an AWS region")] = knob("hub", DEFAULT_REGION)
    hub_instance_type: str = knob("hub", DEFAULT_HUB_INSTANCE_TYPE, key="instance_type")
    # The hub's AMI id; None: the AL2023 image cached in cdk.context.json (infra.hub.hub_image).
    hub_ami: Annotated[str | None, matches(_AMI, "an AMI id (ami-...)")] = knob("hub", None, key="ami")
    # true: an Image Builder pipeline bakes the hub's venv, Node and proxy on hub_ami (or AL2023), and
    # the hub launches its newest image (infra.images, /ec2hub/<hub_id>/hub-image). Off: hub_ami as is.
    hub_baked_image: bool = knob("hub", False, key="baked_image")
    # -- network ------------------------------------------------------------------------------------
    nat_gateways: int = knob("network", 1, ge=1, le=2)  # one per AZ at most
    vpc_endpoints: bool = knob("network", False)
    allowed_ingress_cidr: str = knob("network", "0.0.0.0/0")
    # The Route 53 private hosted zone of the VPC; the hub API is hub.<zone> (infra/dns.py).
    hub_dns_zone: Annotated[str, matches(_DOMAIN, "a DNS name in lower case (ec2hub.internal)")] = knob(
        "network", "ec2hub.internal", key="private_zone"
    )
    # -- tls ----------------------------------------------------------------------------------------
    certificate_arn: Annotated[str | None, matches(_CERT_ARN, "an ACM certificate ARN")] = knob("tls", None)
    allow_http: bool = knob("tls", False)
    domain_name: Annotated[str | None, matches(_DOMAIN, "a DNS name")] = knob("tls", None, key="domain")
    # -- identity -----------------------------------------------------------------------------------
    admin_user: Annotated[str | None, matches(_ADMIN_USER, "a plain user name")] = knob("identity", None)
    # Sign-in: "native" (NativeAuthenticator), or an identity provider through oauthenticator
    # (infra/identity.py); what each provider needs is checked by _check_provider.
    auth: str = knob("identity", "native", key="authenticator")
    oauth_client_id: Annotated[str | None, matches(_NAME, "an OAuth client id")] = knob("identity", None)
    oidc_authorize_url: Annotated[str | None, matches(_HTTPS_URL, "an https:// URL")] = knob("identity", None)
    oidc_token_url: Annotated[str | None, matches(_HTTPS_URL, "an https:// URL")] = knob("identity", None)
    oidc_userinfo_url: Annotated[str | None, matches(_HTTPS_URL, "an https:// URL")] = knob("identity", None)
    oidc_scopes: tuple[str, ...] = knob("identity", ("openid", "profile", "email"))
    oidc_username_claim: Annotated[str, matches(_NAME, "a claim name")] = knob("identity", "preferred_username")
    oauth_groups_claim: Annotated[str, matches(_NAME, "a claim name")] = knob("identity", "groups")
    oauth_allowed_groups: tuple[str, ...] = knob("identity", ())
    oauth_admin_groups: tuple[str, ...] = knob("identity", ())
    oauth_allow_all: bool = knob("identity", False)
    github_organizations: tuple[str, ...] = knob("identity", ())
    google_domains: tuple[str, ...] = knob("identity", ())
    # google: the Google Workspace administrator (a user name, in each of google_domains) whose
    # rights the stack's service-account secret reads groups with; None: no groups from Google.
    google_groups_admin: Annotated[str | None, matches(_ADMIN_USER, "a plain user name")] = knob("identity", None)
    # None: ec2hub-<hub_id>-<account> (the prefix is unique per region across all accounts).
    cognito_domain_prefix: Annotated[str | None, matches(
        _COGNITO_PREFIX, "a Cognito domain prefix (lowercase letters, digits, hyphens; no aws, amazon or cognito)"
    )] = knob("identity", None)
    # -- limits -------------------------------------------------------------------------------------
    allow_named_servers: bool = knob("limits", True)
    # JupyterHub's c.JupyterHub.named_server_limit_per_user; 0: no limit.
    named_server_limit_per_user: int = knob("limits", 5, ge=0, le=1000)
    # -- culling ------------------------------------------------------------------------------------
    idle_timeout_s: int = knob("culling", 3600, key="idle_timeout", ge=60, le=30 * 24 * 3600)
    # -- spend (ec2spawner.spend) -------------------------------------------------------------------
    # Group -> monthly budget in USD: members cannot start servers past it.
    group_budgets_usd: dict[str, float] = knob("spend", {})
    budget_exempt_admins: bool = knob("spend", False)
    # -- observability (infra/observability.py) ---------------------------------------------------
    # Days CloudWatch Logs keeps the hub's and the notebooks' logs.
    log_retention_days: int = knob("observability", 90)
    # Where the alarms (spawn failures, instances with no owner) mail to; None: no SNS topic.
    alarm_email: Annotated[str | None, matches(_EMAIL, "an email address")] = knob("observability", None)
    # -- database (infra/state.py) -----------------------------------------------------------------
    # The RDS for PostgreSQL instance class of the hub database, without "db.".
    database_instance_type: Annotated[str, matches(_DB_TYPE, "an RDS class without db. (t4g.micro)")] = knob(
        "database", DEFAULT_DATABASE_INSTANCE_TYPE, key="instance_type"
    )
    # -- images (infra/images.py) -------------------------------------------------------------------
    # Baked classes: images kept per class by the lifecycle policy (the newest is the one in use;
    # the others are for rollback).
    image_versions_kept: int = knob("images", 3, key="versions_kept", ge=1, le=100)
    # When to rebuild (only if the base image changed); None: built when the stack creates or
    # changes the recipe, and by hand.
    image_build_schedule: Annotated[str | None, matches(
        _CRON, "an Image Builder cron expression (cron(...))")] = knob("images", None, key="build_schedule")
    # -- catalog (special: a path, or the classes inline) -------------------------------------------
    catalog_path: Path = DEFAULT_CATALOG_FILE
    catalog: Catalog | None = None
    # -- jupyterhub_config.d/ next to ec2hub.yaml ---------------------------------------------------
    extra_config_dir: Path = REPO_ROOT / EXTRA_CONFIG_DIR

    @field_validator("hub_instance_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in ec2_instance_types():
            raise ValueError(f"{value!r} is not an EC2 instance type")
        return value

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_type(cls, value: Any) -> Any:
        if value not in AUTH_TYPES:
            raise ValueError(f"{value!r} is not one of {', '.join(AUTH_TYPES)}")
        return value

    @field_validator(
        "oidc_scopes", "oauth_allowed_groups", "oauth_admin_groups", "github_organizations", "google_domains",
        mode="before",
    )
    @classmethod
    def _names(cls, value: Any) -> tuple[str, ...]:
        """A list (the file, cdk.json) or comma- or space-separated text (``-c``)."""
        items = value if isinstance(value, list | tuple) else re.split(r"[,\s]+", str(value).strip())
        names = tuple(str(item).strip() for item in items if str(item).strip())
        for name in names:
            if not _NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a name (no spaces or commas)")
        return names

    @property
    def oauth(self) -> bool:
        """Sign-in through an identity provider (a client secret in Secrets Manager)."""
        return self.auth != "native"

    @field_validator("group_budgets_usd", mode="before")
    @classmethod
    def _budgets(cls, value: Any) -> dict[str, float]:
        """A mapping (the file, cdk.json) or ``group=usd,group=usd`` (``-c``)."""
        if isinstance(value, str):
            pairs = [p.split("=", 1) if "=" in p else [p, ""] for p in value.split(",") if p.strip()]
        elif isinstance(value, dict):
            pairs = list(value.items())
        else:
            raise ValueError(f"must be group=usd,... or a mapping, got {value!r}")  # noqa: TRY004 (pydantic turns only ValueError into a validation error)
        budgets = {}
        for group, usd in pairs:
            group = str(group).strip()
            if not _GROUP.match(group):
                raise ValueError(f"{group!r} is not a group name")
            try:
                amount = float(usd)
            except (TypeError, ValueError):
                raise ValueError(f"group {group!r}: {usd!r} is not an amount in USD") from None
            if isinstance(usd, bool) or not 0 <= amount < 1e9:
                raise ValueError(f"group {group!r}: {usd!r} must be at least 0")
            budgets[group] = amount
        return budgets

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"{value} is not a period CloudWatch Logs keeps logs for "
                             f"(one of {', '.join(map(str, LOG_RETENTION_DAYS))})")
        return value

    @field_validator("allowed_ingress_cidr")
    @classmethod
    def _ipv4_network(cls, value: str) -> str:
        try:
            # The load balancer is IPv4 (the VPC has no IPv6 block).
            return str(ipaddress.IPv4Network(value, strict=True))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 network (a.b.c.d/n)") from None

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

    def load_catalog(self) -> Catalog:
        """The classes: inline in ``ec2hub.yaml``, else the catalog file (CatalogError if bad)."""
        if self.catalog is not None:
            return self.catalog
        return load_catalog(self.catalog_path)


def _knobs() -> dict[str, tuple[str, str]]:
    """Flat field name -> (section, key in that section) of every knob."""
    found = {}
    for name, info in HubConfig.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "section" in extra:
            found[name] = (str(extra["section"]), str(extra.get("key") or name))
    return found


KNOBS = _knobs()
# Every context key build_app looks up: the knobs, the catalog file, and the configuration file.
CONTEXT_KEYS = (*KNOBS, "catalog", "config")


# -- reading --------------------------------------------------------------------------------------


def _message(error: dict[str, Any]) -> str:
    """One pydantic error as the one-line message ec2hub prints."""
    value = error.get("input")
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return f"{value!r} is not a whole number"
    if kind in {"bool_parsing", "bool_type"}:
        return f"{value!r} is not true or false"
    if kind in {"greater_than_equal", "less_than_equal"}:
        field = HubConfig.model_fields[error["loc"][0]]
        low = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
        high = next((m.le for m in field.metadata if hasattr(m, "le")), None)
        return f"{value!r} must be between {low} and {high}"
    if kind == "literal_error":
        return f"{value!r} is not {ctx.get('expected', 'allowed')}"
    if kind == "string_type":
        return f"must be a string, got {value!r}"
    return str(error["msg"]).removeprefix("Value error, ")


def _build(values: dict[str, Any], where: dict[str, str]) -> HubConfig:
    """HubConfig from flat values; ``where[name]`` says how to name a field in an error."""
    try:
        return HubConfig(**values)
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise ConfigError(f"{where.get(name, name)}: {_message(first)}") from None


def _context_values(context: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Knob values given as context, and the knobs given as an empty string: those are cleared
    back to their default, whatever the file says (``-c certificate_arn=``)."""
    values, cleared = {}, set()
    for name in KNOBS:
        value = context.get(name)
        if isinstance(value, str):
            value = value.strip()
        if value is None:
            continue
        if value == "":
            cleared.add(name)
            continue
        if isinstance(value, bool) and HubConfig.model_fields[name].annotation is int:
            raise ConfigError(f"context {name}: {value!r} is not a whole number")
        values[name] = value
    return values, cleared


def _check_required(config: HubConfig, *, admin: str, certificate: str) -> HubConfig:
    # Checked after every value parsed, so a malformed value is reported as such first. The hub
    # takes passwords, so plain HTTP must be asked for by name.
    if config.admin_user is None:
        raise ConfigError(f"{admin}: required: the user name of the hub's first admin")
    if not config.https and not config.allow_http:
        raise ConfigError(
            f"{certificate}: required: an ACM certificate ARN for HTTPS, or allow_http: true "
            "to serve plain HTTP"
        )
    return config


def _check_provider(config: HubConfig, where: dict[str, str]) -> None:
    """What the chosen identity provider needs: one line naming the first missing value, as
    ``where`` names it (the file's field or the context key)."""
    if config.auth in ("github", "google", "oidc") and config.oauth_client_id is None:
        raise ConfigError(
            f"{where['oauth_client_id']}: required with auth={config.auth}: the client id of the OAuth "
            "app registered with the provider (its secret goes into Secrets Manager after deploy)"
        )
    if config.auth == "oidc":
        for key in ("oidc_authorize_url", "oidc_token_url", "oidc_userinfo_url"):
            if getattr(config, key) is None:
                raise ConfigError(
                    f"{where[key]}: required with auth=oidc: the provider's endpoint (its "
                    "/.well-known/openid-configuration lists them)"
                )
    if config.google_groups_admin and config.auth != "google":
        raise ConfigError(f"{where['google_groups_admin']}: only with auth=google (other providers' groups "
                          "come in their tokens)")
    if config.google_groups_admin and not config.google_domains:
        raise ConfigError(f"{where['google_domains']}: required with google_groups_admin: the Google Workspace "
                          "domains whose users sign in and whose groups are read")
    if (config.auth == "google" and not config.google_groups_admin
            and (config.oauth_allowed_groups or config.oauth_admin_groups)):
        raise ConfigError(
            f"{where['oauth_allowed_groups']}: Google's tokens carry no groups: set google_groups_admin (a "
            "Workspace administrator whose rights a service account reads groups with), or use "
            "google_domains, oauth_allow_all or admin_user (groups are managed in the hub)"
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
            f"{where[allow.split()[0]]}: required with auth={config.auth}: say who may sign in "
            f"({allow}), or -c oauth_allow_all=true for everyone the provider signs in"
        )
    if config.auth == "cognito" and not config.https:
        # Cognito accepts plain-HTTP callback URLs only for localhost.
        raise ConfigError(
            f"{where['certificate_arn']}: required with auth=cognito: Cognito sends users back only to "
            "an https:// callback URL (-c certificate_arn=arn:aws:acm:...)"
        )


def config_from_context(context: dict[str, Any]) -> HubConfig:
    """Parse and check context values alone (no configuration file); defaults for the rest.

    ``admin_user`` is required, and so is ``certificate_arn`` unless ``allow_http`` is true.
    """
    values, _cleared = _context_values(context)
    if context.get("catalog"):
        values["catalog_path"] = Path(str(context["catalog"]))
    config = _build(values, {name: f"context {name}" for name in KNOBS})
    if config.admin_user is None:
        raise ConfigError(
            "context admin_user: required: the user name of the hub's first admin "
            "(-c admin_user=<name>)"
        )
    _check_provider(config, {name: f"context {name}" for name in KNOBS})
    if not config.https and not config.allow_http:
        raise ConfigError(
            "context certificate_arn: required: an ACM certificate ARN for HTTPS "
            "(-c certificate_arn=arn:aws:acm:...), or -c allow_http=true to serve plain HTTP"
        )
    return config


def read_config_file(path: Path) -> Any:
    """The parsed YAML of a configuration file (ConfigError naming the file if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path.name}: cannot read the configuration: {error.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path.name}: not valid YAML{line}: {getattr(error, 'problem', error)}") from None


def _file_values(data: Any, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Flat knob values from the sections of a parsed ``ec2hub.yaml``, and how to name each."""
    source = path.name
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    by_place = {place: name for name, place in KNOBS.items()}
    values: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r} (allowed: {', '.join(SECTIONS)})")
        if body is None:
            continue
        if section == "catalog":
            values.update(_catalog_values(body, path))
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {section}: must be a mapping of settings")
        allowed = sorted(key for sec, key in KNOBS.values() if sec == section)
        for key, value in body.items():
            name = by_place.get((section, key))
            if name is None:
                raise ConfigError(f"{source}: {section}.{key}: unknown field (allowed: {', '.join(allowed)})")
            if value is not None:
                values[name] = value
    where = {name: f"{source}: {sec}.{key}" for name, (sec, key) in KNOBS.items()}
    return values, where


def _catalog_values(body: Any, path: Path) -> dict[str, Any]:
    """``catalog: {path: <file>}`` (relative to ec2hub.yaml) or ``catalog: {defaults:, classes:}``."""
    source = path.name
    if not isinstance(body, dict):
        raise ConfigError(f"{source}: catalog: must be a mapping: path: <file>, or defaults: and classes:")
    if "path" in body:
        extra = sorted(set(body) - {"path"})
        if extra:
            raise ConfigError(f"{source}: catalog: path and {extra[0]!r} cannot be given together")
        if not isinstance(body["path"], str) or not body["path"].strip():
            raise ConfigError(f"{source}: catalog.path: must be a file name, got {body['path']!r}")
        return {"catalog_path": path.parent / body["path"].strip()}
    try:
        return {"catalog": parse_catalog(body, source=f"{source}: catalog")}
    except CatalogError as error:
        raise ConfigError(str(error)) from None


def load_config(context: dict[str, Any], *, path: str | Path | None = None) -> HubConfig:
    """The deployment's configuration: ``ec2hub.yaml`` (``path``, the ``config`` context key, or
    the repository's), then ``context`` over it. A missing default file counts as empty.
    """
    chosen = path or context.get("config")
    file = Path(chosen) if chosen else DEFAULT_CONFIG_FILE
    if chosen or file.exists():
        values, where = _file_values(read_config_file(file), file)
    else:
        values, where = {}, {}
    overrides, cleared = _context_values(context)
    for name in cleared:
        values.pop(name, None)
    values.update(overrides)
    where.update({name: f"context {name}" for name in [*overrides, *cleared]})
    if context.get("catalog"):
        values["catalog_path"] = Path(str(context["catalog"]))
        values.pop("catalog", None)
    values["extra_config_dir"] = file.parent / EXTRA_CONFIG_DIR
    labels = {name: where.get(name, f"{file.name}: {KNOBS[name][0]}.{KNOBS[name][1]}") for name in KNOBS}
    config = _build(values, labels)
    _check_required(config, admin=labels["admin_user"], certificate=labels["certificate_arn"])
    _check_provider(config, labels)
    return config
