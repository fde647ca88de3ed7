#!/usr/bin/env python3
"""The CDK app: `cdk synth` / `cdk deploy` run this (see cdk.json and docs/DEPLOY.md).

A mistake in instance-classes.yaml or in a context value prints one line, `error: <message>`, and
exits with status 1: no traceback.
"""

import sys
from pathlib import Path

# Run from anywhere: the repo root holds `infra`; the spawner package holds the catalog schema.
ROOT = Path(__file__).resolve().parent
for path in (ROOT, ROOT / "spawner"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from ec2spawner.catalog import CatalogError  # noqa: E402

from infra import ConfigError, build_app  # noqa: E402


def main() -> int:
    try:
        app = build_app()
    except (CatalogError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
