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
    # the server's secret: nothing secret here). start_timeout: seconds until the instance runs
    # (None: EC2Spawner.start_timeout). stop_mode: what stopping does to the instance (None:
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


# Fields that make sense once for all classes; slug and default are per class by nature.
_DEFAULTABLE = set(InstanceClass.model_fields) - {"slug", "display_name", "default"}


class Catalog(BaseModel):
    """The whole file: shared ``defaults`` and the list of ``classes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: Annotated[list[InstanceClass], Field(min_length=1, max_length=50)]

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
        return self

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
    field = ".".join(str(part) for part in loc if not isinstance(part, int))
    if first["type"] == "extra_forbidden":
        message = "unknown field (allowed: " + ", ".join(sorted(InstanceClass.model_fields)) + ")"
    if first["type"] == "missing":
        message = "required field is missing"
    return f"{where}{field + ': ' if field else ''}{message}"


def parse_catalog(data: Any, *, source: str = "instance-classes.yaml") -> Catalog:
    """Validate a parsed YAML document, applying ``defaults`` to every class."""
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: the top level must be a mapping with 'defaults' and 'classes'")
    unknown = set(data) - {"defaults", "classes"}
    if unknown:
        raise CatalogError(
            f"{source}: unknown top-level key {min(unknown)!r} (allowed: defaults, classes)"
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
    try:
        return Catalog(classes=merged)
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


