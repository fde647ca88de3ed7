"""Synthesized ec2hub stacks shared by the infra tests (each synth costs about a second)."""

from __future__ import annotations

import pytest
from infra_testing import (
    COGNITO_CONTEXT,
    FULL_CATALOG,
    FULL_CONTEXT,
    Synth,
    synth,
    write_catalog,
)


@pytest.fixture(scope="session")
def default_synth(tmp_path_factory) -> Synth:
    """The repo as it is: instance-classes.yaml, cdk.json's defaults, an admin and allow_http."""
    return synth(tmp_path_factory, {})


@pytest.fixture(scope="session")
def full_synth(tmp_path_factory) -> Synth:
    """HTTPS, VPC endpoints, an admin, a spot class and a literal AMI."""
    catalog = write_catalog(tmp_path_factory.mktemp("catalog"), FULL_CATALOG)
    return synth(tmp_path_factory, {**FULL_CONTEXT, "catalog": str(catalog)})


@pytest.fixture(scope="session")
def cognito_synth(tmp_path_factory) -> Synth:
    """Sign-in through a Cognito user pool the stack makes (HTTPS, the full catalog, an admin group)."""
    catalog = write_catalog(tmp_path_factory.mktemp("catalog"), FULL_CATALOG)
    return synth(tmp_path_factory, {**COGNITO_CONTEXT, "catalog": str(catalog)})


@pytest.fixture(scope="session", params=["default", "full"])
def any_synth(request) -> Synth:
    return request.getfixturevalue(f"{request.param}_synth")
