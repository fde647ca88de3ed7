"""The "Start My Server" options: which classes a user may pick, the form, and validation.

Pure functions of the class list, the user's groups and the instance-type facts, so the form data
and every validation message are tested by equality. The spawner wires them into JupyterHub's
``options_form`` / ``options_from_form`` / ``apply_user_options`` hooks; ``apply_user_options``
runs for the form and the REST API alike (JupyterHub >= 5.3), before ``start()``, and an
``HTTPError`` raised there reaches the user as a 400 with its message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from .catalog import SLUG_PATTERN
from .settings import ClassSettings

OPTION_KEY = "instance_class"
# KubeSpawner's key for the same choice: JupyterHub's admin page shows ``user_options.profile`` in
# its Profile column, and scripts written for Zero to JupyterHub post {"profile": "<slug>"}.
PROFILE_KEY = "profile"
MAX_VALUE_LENGTH = 64
SLUG_RE = re.compile(SLUG_PATTERN)


class OptionsError(ValueError):
    """The user's options are refused; the message says what is wrong and what is allowed."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class TypeFacts:
    """What an instance type gives, from DescribeInstanceTypes."""

    vcpus: int
    memory_gib: float
    gpus: int = 0
    gpu_name: str = ""


def allowed_classes(classes: Iterable[ClassSettings], groups: Iterable[str]) -> list[ClassSettings]:
    """The classes a member of ``groups`` may use, in catalog order."""
    groups = frozenset(groups)
    return [c for c in classes if c.allows(groups)]


def default_class(allowed: list[ClassSettings]) -> ClassSettings | None:
    """The catalog default if the user may use it, else the first class they may use."""
    return next((c for c in allowed if c.default), allowed[0] if allowed else None)


def _names(classes: Iterable[ClassSettings]) -> str:
    return ", ".join(c.slug for c in classes) or "none"


def validate_user_options(
    options: Any, classes: list[ClassSettings], groups: Iterable[str]
) -> ClassSettings:
    """The class ``options`` asks for, or :class:`OptionsError` saying why not.

    ``{}`` (or None) means the default class. The class is named by ``instance_class`` or by its
    alias ``profile``; both may be given if they name the same class. No other key is accepted.
    """
    allowed = allowed_classes(classes, groups)
    if not allowed:
        raise OptionsError(
            "No instance class is available to you: ask an administrator to add you to a group "
            "that may use one.",
            status_code=403,
        )
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise OptionsError(
            f"user_options must be an object like {{\"{OPTION_KEY}\": \"<class>\"}}, "
            f"not {type(options).__name__}"
        )
    unexpected = sorted(str(k)[:MAX_VALUE_LENGTH] for k in options if k not in (OPTION_KEY, PROFILE_KEY))
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:5]) + (", ..." if len(unexpected) > 5 else "")
        raise OptionsError(
            f"Unexpected option {shown}: "
            f"the only option is '{OPTION_KEY}' (or its alias '{PROFILE_KEY}'; one of: {_names(allowed)})"
        )
    given = [key for key in (OPTION_KEY, PROFILE_KEY) if key in options]
    if not given:
        return default_class(allowed)
    if len(given) == 2 and options[OPTION_KEY] != options[PROFILE_KEY]:
        raise OptionsError(
            f"'{OPTION_KEY}' {repr(options[OPTION_KEY])[:MAX_VALUE_LENGTH]} and "
            f"'{PROFILE_KEY}' {repr(options[PROFILE_KEY])[:MAX_VALUE_LENGTH]} "
            f"name different classes: give one (one of: {_names(allowed)})"
        )
    key = given[0]
    value = options[key]
    if not isinstance(value, str):
        raise OptionsError(
            f"'{key}' must be a string (one of: {_names(allowed)}), "
            f"not {type(value).__name__}"
        )
    if len(value) > MAX_VALUE_LENGTH:
        raise OptionsError(
            f"'{key}' is too long ({len(value)} characters, at most {MAX_VALUE_LENGTH}): "
            f"use one of: {_names(allowed)}"
        )
    if not SLUG_RE.match(value):
        raise OptionsError(
            f"'{key}' {value!r} is not a class name (lowercase letters, digits and '-'): "
            f"use one of: {_names(allowed)}"
        )
    chosen = next((c for c in classes if c.slug == value), None)
    if chosen is None:
        raise OptionsError(f"Unknown instance class {value!r}: use one of: {_names(allowed)}")
    if chosen not in allowed:
        raise OptionsError(
            f"Instance class {value!r} is not available to your groups: use one of: {_names(allowed)}",
            status_code=403,
        )
    return chosen


def recorded_options(options: Any, chosen: ClassSettings) -> dict[str, Any]:
    """The ``user_options`` to keep for a spawn of ``chosen``: both keys name its slug, so the
    admin page's Profile column shows the class and the next spawn without options picks it again."""
    return {**(options or {}), OPTION_KEY: chosen.slug, PROFILE_KEY: chosen.slug}


def options_from_form(form_data: Mapping[str, list[str]]) -> dict[str, Any]:
    """Form fields (lists of strings) -> ``user_options``; validation happens later, once."""
    options: dict[str, Any] = {}
    for key, values in form_data.items():
        if key == "_xsrf":
            continue
        options[key] = values[0] if isinstance(values, list) and len(values) == 1 else values
    return options


def form_entries(
    classes: list[ClassSettings], facts: Mapping[str, TypeFacts], selected: str | None,
    prices: Mapping[str, float | None] | None = None,
) -> list[dict[str, Any]]:
    """What the form shows for each class (its preferred instance type's figures).

    ``prices`` (class slug -> USD per hour, from :class:`ec2spawner.spend.PriceBook`) overrides
    the catalog's ``hourly_cost_usd``; a class missing from it shows the catalog's figure.
    """
    prices = prices or {}
    entries = []
    for c in classes:
        f = facts.get(c.instance_types[0])
        entries.append(
            {
                "slug": c.slug,
                "display_name": c.display_name,
                "description": c.description,
                "instance_type": c.instance_types[0],
                "vcpus": f.vcpus if f else None,
                "memory_gib": f.memory_gib if f else None,
                "gpus": f.gpus if f else 0,
                "gpu_name": f.gpu_name if f else "",
                "spot": c.is_spot,
                "hourly_cost_usd": prices.get(c.slug, c.hourly_cost_usd),
                "selected": c.slug == selected,
            }
        )
    return entries


def type_facts(instance_types: list[dict]) -> dict[str, TypeFacts]:
    """DescribeInstanceTypes ``InstanceTypes`` -> facts per type name."""
    facts = {}
    for t in instance_types:
        gpus = (t.get("GpuInfo") or {}).get("Gpus") or []
        facts[t["InstanceType"]] = TypeFacts(
            vcpus=t["VCpuInfo"]["DefaultVCpus"],
            memory_gib=round(t["MemoryInfo"]["SizeInMiB"] / 1024, 1),
            gpus=sum(g.get("Count", 0) for g in gpus),
            gpu_name=" + ".join(f"{g.get('Manufacturer', '')} {g.get('Name', '')}".strip() for g in gpus),
        )
    return facts


_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True),
)


def render_form(entries: list[dict[str, Any]], spend: Mapping[str, Any] | None = None) -> str:
    """The form's HTML; ``spend`` (``EC2Spawner.spend_summary``) adds the month's spend lines."""
    return _templates.get_template("options_form.html").render(entries=entries, key=OPTION_KEY, spend=spend)
