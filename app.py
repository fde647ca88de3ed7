#!/usr/bin/env python3
"""The CDK app: `cdk synth` / `cdk deploy` run this (see cdk.json and docs/DEPLOY.md).

The deployment is described by ec2hub.yaml at the repository root (`-c config=<path>` names
another file); `-c key=value` overrides one of its values by its flat name (for CI). A mistake in
ec2hub.yaml, the catalog or a context value prints one line, `error: <message>`, and exits with
status 1: no traceback.
"""

import json
import os
import sys
from pathlib import Path

# Run from anywhere: the repo root holds `infra`; the spawner package holds the catalog schema.
ROOT = Path(__file__).resolve().parent
for path in (ROOT, ROOT / "spawner"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from ec2spawner.catalog import CatalogError


def fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def main() -> int:
    from infra.config import CONTEXT_KEYS, ConfigError, load_config

    # Check the configuration and catalog before loading the CDK (a few seconds): an admin's typo
    # answers at once. The CLI passes cdk.json's and -c context in CDK_CONTEXT_JSON.
    try:
        context = json.loads(os.environ.get("CDK_CONTEXT_JSON") or "{}")
    except ValueError:
        context = None  # not JSON: the CDK reads its context its own way; build_app checks it all
    try:
        if isinstance(context, dict):
            load_config({k: v for k, v in context.items() if k in CONTEXT_KEYS}).load_catalog()
    except (CatalogError, ConfigError) as error:
        return fail(error)

    from infra import build_app

    try:
        app = build_app({})
    except (CatalogError, ConfigError) as error:
        return fail(error)
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
