#!/usr/bin/env python3
"""The CDK app: `cdk synth` / `cdk deploy` run this (see cdk.json and docs/DEPLOY.md).

A mistake in instance-classes.yaml or in a context value prints one line, `error: <message>`, and
exits with status 1: no traceback. Context comes from cdk.json and `-c key=value` (the CLI passes
them in CDK_CONTEXT_JSON); `-c catalog=<path>` points at another catalog file.
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

from ec2spawner.catalog import CatalogError, load_catalog


def fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def main() -> int:
    # Check the catalog before loading the CDK (a second or two): an admin's typo answers at once.
    try:
        cli_context = json.loads(os.environ.get("CDK_CONTEXT_JSON") or "{}")
        load_catalog(cli_context.get("catalog") or ROOT / "instance-classes.yaml")
    except CatalogError as error:
        return fail(error)
    except ValueError:
        pass  # not JSON: the CDK reads its context its own way; build_app checks everything again

    from infra import ConfigError, build_app

    try:
        app = build_app({})
    except (CatalogError, ConfigError) as error:
        return fail(error)
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
