"""The instance-class catalog: the one schema for ``instance-classes.yaml``.

An admin describes the notebook instance classes in one YAML file at the root of the repository.
``infra/`` turns each class into a launch template; the spawner offers the classes in its form.
Both read the file through :func:`load_catalog`, so there is one schema and one direction of
dependency (infra imports the spawner package, never the reverse).

A bad catalog raises :class:`CatalogError` whose message is one line naming the file, the class
and the field, e.g.::

    instance-classes.yaml: class 'gpu': instance_types: 't9.huge' is not an EC2 instance type
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SLUG_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
AMI_PATTERN = r"^(ami-[0-9a-f]{8}([0-9a-f]{9})?|ssm:/[A-Za-z0-9_./-]+)$"

# A class's `packages:` are pip requirements for its image (PEP 508), one shell word each in the
# image build: no options ("--index-url ..."), no whitespace, bounded.
MAX_PACKAGES = 50
MAX_REQUIREMENT_CHARS = 200

# A root volume must hold the AMI (Deep Learning AMIs need about 75 GB); gp3 allows up to 16 TiB.
MIN_VOLUME_GB = 8
MAX_VOLUME_GB = 16384
# idle_timeout and max_age: at most 30 days (a larger number is more likely a typo for "forever").
MAX_LIMIT_S = 30 * 24 * 3600

# A server's extra environment: shell-style names; the hub's own variables cannot be replaced.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"

# A target (another AWS account and region a class launches in): its name, and what AWS allows.
TARGET_NAME_PATTERN = SLUG_PATTERN
ACCOUNT_PATTERN = r"^[0-9]{12}$"
# A region name: "us-east-1", "eu-central-2", "us-gov-west-1", "ap-southeast-7", "cn-north-1".
REGION_PATTERN = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$"
# sts:AssumeRole's ExternalId: 2..1224 characters of [\w+=,.@:/-] (the STS API reference).
EXTERNAL_ID_PATTERN = r"^[\w+=,.@:/-]{2,1224}$"
# An IAM role ARN (any partition; a role name may carry a path).
ROLE_ARN_PATTERN = r"^arn:aws[a-z-]*:iam::([0-9]{12}):role/[\w+=,.@/-]{1,512}$"
RESERVED_ENV_PREFIXES = ("JUPYTERHUB_", "JPY_")


class CatalogError(ValueError):
    """The catalog file is missing, not YAML, or does not fit the schema (one-line message)."""


@functools.cache
def ec2_instance_types() -> frozenset[str]:
    """Every instance type name EC2 knows, from botocore's own service model (no AWS call)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("ec2")
    return frozenset(model.shape_for("InstanceType").enum)


class InstanceClass(BaseModel):
    """One kind of notebook instance a user can pick."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slug: Annotated[str, Field(pattern=SLUG_PATTERN)]
    display_name: Annotated[str, Field(min_length=1, max_length=80)]
    description: Annotated[str, Field(max_length=500)] = ""
    instance_types: Annotated[list[str], Field(min_length=1, max_length=10)]
    ami: Annotated[str, Field(pattern=AMI_PATTERN)]
    volume_gb: Annotated[int, Field(ge=MIN_VOLUME_GB, le=MAX_VOLUME_GB)] = 30
    market: Literal["on-demand", "spot"] = "on-demand"
    allowed_groups: list[Annotated[str, Field(min_length=1, max_length=255)]] = []
    default: bool = False
    hourly_cost_usd: Annotated[float, Field(ge=0, le=1000)] | None = None
    # Per-class policies. environment: extra variables of the server (in the settings document and
    # the server's secret: nothing secret here). start_timeout: seconds until the server answers
    # (the launch, the boot and the server's start; None: EC2Spawner.start_timeout). stop_mode: what stopping does to the instance (None:
    # EC2Spawner.stop_mode). max_per_user: running servers of this class one user may have.
    environment: dict[str, Annotated[str, Field(max_length=4096)]] = {}
    start_timeout: Annotated[int, Field(ge=10, le=3600)] | None = None
    stop_mode: Literal["terminate", "stop"] | None = None
    max_per_user: Annotated[int, Field(ge=1, le=100)] | None = None
    # Seconds a server of this class may be idle (no busy kernel, CPU, GPU, terminal or browser
    # traffic: docs/ARCHITECTURE.md §17) before the hub stops it; None: the hub's idle_timeout_s.
    idle_timeout: Annotated[int, Field(ge=1, le=MAX_LIMIT_S)] | None = None
    # Most seconds a server of this class runs, busy or not, before the hub stops it; None: no limit.
    max_age: Annotated[int, Field(ge=1, le=MAX_LIMIT_S)] | None = None
    # "baked": EC2 Image Builder bakes the notebook environment (and `packages`) into an image on
    # `ami`, and the class launches the newest one (infra/images.py); "stock": `ami` as it is, and
    # the first boot installs the environment.
    image: Literal["stock", "baked"] = "stock"
    packages: Annotated[list[str], Field(max_length=MAX_PACKAGES)] = []
    # The name of a catalog ``targets`` entry: the class launches in that account and region
    # (through the role the hub assumes there). None: in the hub's own account and region.
    target: Annotated[str, Field(pattern=TARGET_NAME_PATTERN)] | None = None

    @field_validator("instance_types")
    @classmethod
    def _known_instance_types(cls, types: list[str]) -> list[str]:
        known = ec2_instance_types()
        for name in types:
            if name not in known:
                raise ValueError(f"{name!r} is not an EC2 instance type")
        duplicates = sorted({t for t in types if types.count(t) > 1})
        if duplicates:
            raise ValueError(f"{duplicates[0]!r} is listed twice")
        return types

    @field_validator("environment")
    @classmethod
    def _plain_names(cls, environment: dict[str, str]) -> dict[str, str]:
        for name in environment:
            if not re.match(ENV_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
            if name.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"{name!r}: the hub sets the {name.split('_')[0]}_* variables itself")
        return environment

    @field_validator("packages")
    @classmethod
    def _pip_requirements(cls, packages: list[str]) -> list[str]:
        from packaging.requirements import InvalidRequirement, Requirement

        for requirement in packages:
            if requirement.startswith("-") or not requirement.strip():
                raise ValueError(f"{requirement!r} is not a requirement (pip options are not allowed)")
            if len(requirement) > MAX_REQUIREMENT_CHARS or any(c.isspace() or c in "'\"\\" for c in requirement):
                raise ValueError(
                    f"{requirement!r}: a requirement is one word of at most {MAX_REQUIREMENT_CHARS} "
                    "characters, without spaces or quotes (e.g. 'pandas==2.3.3')"
                )
            try:
                Requirement(requirement)
            except InvalidRequirement as error:
                raise ValueError(f"{requirement!r} is not a pip requirement: {str(error).splitlines()[0]}") from None
        duplicates = sorted({p for p in packages if packages.count(p) > 1})
        if duplicates:
            raise ValueError(f"{duplicates[0]!r} is listed twice")
        return packages

    @model_validator(mode="after")
    def _packages_need_a_baked_image(self) -> InstanceClass:
        if self.packages and self.image != "baked":
            raise ValueError("packages: needs image: baked (they are installed when the image is built)")
        if self.target is not None and self.image == "baked":
            # Its image pipeline and image parameter would have to live in the target account.
            raise ValueError("image: baked is not supported with a target yet (use stock)")
        return self

    @property
    def baked(self) -> bool:
        return self.image == "baked"

    @property
    def is_spot(self) -> bool:
        return self.market == "spot"

    def allows(self, groups: set[str] | frozenset[str]) -> bool:
        """Whether a user in ``groups`` may use this class (no allowed_groups: everyone may)."""
        return not self.allowed_groups or bool(set(self.allowed_groups) & set(groups))


class Target(BaseModel):
    """Another AWS account and region classes may launch in, reached through a role the hub assumes.

    The hub calls ``sts:AssumeRole`` on ``role_arn`` with ``external_id`` (the role's trust policy
    names only the hub's role and requires this id: infra/target_stack.py) and makes every EC2 and
    SSM call of those classes' servers with the credentials it gets. The external id is not a
    secret (it guards against a confused deputy, not an attacker who has the hub's role).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str
    region: str
    role_arn: str
    external_id: str

    @field_validator("account", mode="before")
    @classmethod
    def _twelve_digits(cls, account: Any) -> str:
        if isinstance(account, int):  # YAML reads 012345678901 as a number and drops the zero
            raise ValueError(  # noqa: TRY004 (pydantic reports only ValueError as a validation error)
                f"{account} must be quoted ('{account:012d}'): an account id is 12 digits, not a number")
        if not isinstance(account, str) or not re.match(ACCOUNT_PATTERN, account):
            raise ValueError(f"{account!r} is not an AWS account id (12 digits, quoted in YAML)")
        return account

    @field_validator("region")
    @classmethod
    def _region_shape(cls, region: str) -> str:
        if not re.match(REGION_PATTERN, region):
            raise ValueError(f"{region!r} is not an AWS region name (like 'eu-central-1')")
        return region

    @field_validator("external_id")
    @classmethod
    def _external_id_shape(cls, external_id: str) -> str:
        if not re.match(EXTERNAL_ID_PATTERN, external_id):
            raise ValueError("not an sts:AssumeRole external id (2 to 1224 of the characters A-Za-z0-9_+=,.@:/-)")
        return external_id

    @model_validator(mode="after")
    def _role_in_its_account(self) -> Target:
        match = re.match(ROLE_ARN_PATTERN, self.role_arn)
        if match is None:
            raise ValueError(f"role_arn: {self.role_arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        if match.group(1) != self.account:
            raise ValueError(f"role_arn: {self.role_arn!r} is not in account {self.account} (the target's account)")
        return self

    @property
    def role_name(self) -> str:
        """The role's name, without its path (what the target stack names the role)."""
        return self.role_arn.rsplit("/", 1)[-1]


# Fields that make sense once for all classes; slug and default are per class by nature.
_DEFAULTABLE = set(InstanceClass.model_fields) - {"slug", "display_name", "default"}


class Catalog(BaseModel):
    """The whole file: shared ``defaults`` and the list of ``classes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: Annotated[list[InstanceClass], Field(min_length=1, max_length=50)]
    # Name -> another account and region; a class names one with ``target: <name>``.
    targets: dict[Annotated[str, Field(pattern=TARGET_NAME_PATTERN)], Target] = {}

    @model_validator(mode="after")
    def _unique_slugs_and_one_default(self) -> Catalog:
        seen: set[str] = set()
        for cls in self.classes:
            if cls.slug in seen:
                raise ValueError(f"class {cls.slug!r}: slug: {cls.slug!r} is used by two classes")
            seen.add(cls.slug)
        defaults = [c.slug for c in self.classes if c.default]
        if len(defaults) != 1:
            found = ", ".join(repr(s) for s in defaults) or "none"
            raise ValueError(f"default: exactly one class must have default: true (found {found})")
        for cls in self.classes:
            if cls.target is not None and cls.target not in self.targets:
                defined = ", ".join(sorted(self.targets)) or "none"
                raise ValueError(f"class {cls.slug!r}: target: {cls.target!r} is not one of the catalog's targets "
                                 f"(defined: {defined})")
        return self

    def classes_of(self, target: str | None) -> list[InstanceClass]:
        """The classes that launch in ``target`` (None: in the hub's own account and region)."""
        return [c for c in self.classes if c.target == target]

    @property
    def default_class(self) -> InstanceClass:
        return next(c for c in self.classes if c.default)

    def get(self, slug: str) -> InstanceClass | None:
        return next((c for c in self.classes if c.slug == slug), None)

    @property
    def slugs(self) -> list[str]:
        return [c.slug for c in self.classes]


def _describe(error: ValidationError, raw_classes: list[Any]) -> str:
    """One line for the first problem: ``class '<slug>': <field>: <message>``."""
    first = error.errors()[0]
    loc = list(first["loc"])
    message = first["msg"]
    message = message.removeprefix("Value error, ")
    where = ""
    if len(loc) >= 2 and loc[0] == "classes" and isinstance(loc[1], int):
        index = loc[1]
        raw = raw_classes[index] if index < len(raw_classes) else {}
        slug = raw.get("slug") if isinstance(raw, dict) else None
        where = f"class {slug!r}: " if isinstance(slug, str) else f"class #{index + 1}: "
        loc = loc[2:]
    elif len(loc) >= 2 and loc[0] == "targets":
        if loc[-1] == "[key]":
            message = f"{loc[1]!r} is not a target name (lower-case letters, digits and '-')"
            where, loc = "targets: ", []
        else:
            where, loc = f"target {loc[1]!r}: ", loc[2:]
    field = ".".join(str(part) for part in loc if not isinstance(part, int))
    if first["type"] == "extra_forbidden":
        model = Target if where.startswith("target ") else InstanceClass
        message = "unknown field (allowed: " + ", ".join(sorted(model.model_fields)) + ")"
    if first["type"] == "missing":
        message = "required field is missing"
    return f"{where}{field + ': ' if field else ''}{message}"


def parse_catalog(data: Any, *, source: str = "instance-classes.yaml") -> Catalog:
    """Validate a parsed YAML document, applying ``defaults`` to every class."""
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: the top level must be a mapping with 'defaults' and 'classes'")
    unknown = set(data) - {"defaults", "classes", "targets"}
    if unknown:
        raise CatalogError(
            f"{source}: unknown top-level key {min(unknown)!r} (allowed: defaults, classes, targets)"
        )
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise CatalogError(f"{source}: defaults: must be a mapping of class fields")
    bad = sorted(set(defaults) - _DEFAULTABLE)
    if bad:
        raise CatalogError(
            f"{source}: defaults: {bad[0]!r} cannot be a default (allowed: {', '.join(sorted(_DEFAULTABLE))})"
        )
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, list):
        raise CatalogError(f"{source}: classes: must be a list of classes")
    merged = [{**defaults, **c} if isinstance(c, dict) else c for c in raw_classes]
    targets = data.get("targets") or {}
    if not isinstance(targets, dict):
        raise CatalogError(f"{source}: targets: must be a mapping of target name to account, region, role_arn, "
                           "external_id")
    try:
        return Catalog(classes=merged, targets=targets)
    except ValidationError as error:
        raise CatalogError(f"{source}: {_describe(error, raw_classes)}") from None


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog file; every failure is a one-line :class:`CatalogError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CatalogError(f"{path.name}: cannot read the catalog: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise CatalogError(f"{path.name}: not valid YAML{line}: {getattr(error, 'problem', error)}") from None
    return parse_catalog(data, source=path.name)


