"""ec2hub's AWS CDK app: one stack built from ``ec2hub.yaml`` (with its catalog) and CDK context:
the hub's, or with ``-c target=<name>`` the target stack of that catalog target
(infra/target_stack.py).

Entry points:

- :func:`build_app` -- the configured ``cdk.App`` with the stack and cdk-nag attached (``app.py``
  calls it; tests and the sandbox call it with a context dict).
- :func:`synth_template` -- the synthesized CloudFormation template as a dict.

The CDK (a few seconds to load) is imported only when an app is built, so ``infra.config`` checks
a configuration at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import CONTEXT_KEYS, REPO_ROOT, ConfigError, HubConfig, load_config

if TYPE_CHECKING:
    from aws_cdk import App

PATH_METADATA = "aws:cdk:enable-path-metadata"

__all__ = [
    "ConfigError",
    "Ec2HubStack",
    "HubConfig",
    "build_app",
    "cdk_json_context",
    "synth_template",
]


def __getattr__(name: str) -> Any:
    if name == "Ec2HubStack":
        from .stack import Ec2HubStack

        return Ec2HubStack
    raise AttributeError(f"module 'infra' has no attribute {name!r}")


def acknowledge_findings(stack: Any) -> None:
    """infra.nag.acknowledge_findings, imported when first needed (tests replace this name)."""
    from .nag import acknowledge_findings as acknowledge

    acknowledge(stack)


def add_checks(app: Any) -> None:
    """infra.nag.add_checks, imported when first needed."""
    from .nag import add_checks as add

    add(app)


def cdk_json_context() -> dict[str, Any]:
    """The context block of cdk.json (the CLI passes it to app.py; in-process callers need it too)."""
    return json.loads((REPO_ROOT / "cdk.json").read_text(encoding="utf-8")).get(
        "context", {}
    )


def build_app(
    context: dict[str, Any] | None = None,
    *,
    outdir: str | Path | None = None,
    nag: bool = True,
) -> App:
    """The app with the ec2hub stack. ``context`` adds to (and overrides) cdk.json's context.

    The configuration is ``ec2hub.yaml`` (or the file the ``config`` context key names) with the
    context's values over it (:func:`infra.config.load_config`).
    Raises ``ec2spawner.catalog.CatalogError`` or :class:`ConfigError` (one-line messages).
    Context given to an App has the lowest precedence: under the CDK CLI (app.py passes ``{}``),
    cdk.json and ``-c key=value`` win over anything here.
    """
    from aws_cdk import App

    from .stack import Ec2HubStack

    # The CLI turns path metadata on itself (and warns about aws: keys in cdk.json); in-process
    # synths need it too, or cfn-lint flags the pinned AZs (W3010).
    merged = (
        None
        if context is None
        else {**cdk_json_context(), PATH_METADATA: True, **context}
    )
    app = App(context=merged, outdir=str(outdir) if outdir is not None else None)
    values = {key: app.node.try_get_context(key) for key in CONTEXT_KEYS}
    config = load_config({k: v for k, v in values.items() if v is not None})
    catalog = config.load_catalog()
    target = app.node.try_get_context("target")
    if target:
        from .nag import acknowledge_target_findings
        from .target_stack import DEFAULT_TARGET_CIDR, Ec2HubTargetStack

        def required(key: str) -> str:
            value = app.node.try_get_context(key)
            if not value:
                raise ConfigError(f"{key}: required with -c target=<name> (see docs/DEPLOY.md, Adding a target account)")
            return str(value)

        subnets = app.node.try_get_context("target_subnets")
        stack = Ec2HubTargetStack(
            app, config=config, catalog=catalog, target=str(target),
            hub_role_arn=required("hub_role_arn"), hub_cidr=required("hub_cidr"),
            cidr=app.node.try_get_context("target_cidr") or DEFAULT_TARGET_CIDR,
            vpc_id=app.node.try_get_context("target_vpc_id"),
            subnets=_pairs("target_subnets", subnets) if subnets else None,
        )
        if nag:
            acknowledge_target_findings(stack)
            add_checks(app)
        return app
    stack = Ec2HubStack(app, config=config, catalog=catalog,
                        target_outputs=_target_outputs(app.node.try_get_context("target_outputs")))
    if nag:
        acknowledge_findings(stack)
        add_checks(app)
    return app


def _pairs(key: str, value: Any) -> dict[str, str]:
    """``a=x,b=y`` (as -c gives it) or a mapping, as a dict."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs = [item.split("=", 1) for item in str(value).split(",") if item]
    if not pairs or any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        raise ConfigError(f"{key}: write it as az=subnet-id,az=subnet-id")
    return dict(pairs)


def _target_outputs(paths: Any) -> dict[str, dict[str, str]]:
    """The target stacks' outputs: files ``cdk deploy --outputs-file`` wrote (comma-separated
    paths; stack name -> output key -> value), merged."""
    merged: dict[str, dict[str, str]] = {}
    for path in [p for p in str(paths or "").split(",") if p]:
        try:
            merged.update(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            raise ConfigError(f"target_outputs: cannot read {path}: {error}") from None
    return merged


def synth_template(
    context: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Synthesize and return the stack's CloudFormation template."""
    app = build_app(context or {}, **kwargs)
    assembly = app.synth()
    (stack,) = assembly.stacks
    return stack.template
