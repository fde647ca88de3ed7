"""Synthesized ec2hub stacks shared by the infra tests (each synth costs about a second)."""

from __future__ import annotations

import json

import pytest
from infra_testing import (
    COGNITO_CONTEXT,
    FULL_CATALOG,
    FULL_CONTEXT,
    TARGET_CATALOG,
    TARGET_CONTEXT,
    TARGET_OUTPUTS,
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


@pytest.fixture(scope="session")
def target_catalog(tmp_path_factory):
    return write_catalog(tmp_path_factory.mktemp("catalog"), TARGET_CATALOG)


@pytest.fixture(scope="session")
def target_synth(tmp_path_factory, target_catalog) -> Synth:
    """The target stack of the catalog target ``research`` (infra/target_stack.py)."""
    return synth(tmp_path_factory, {**TARGET_CONTEXT, "catalog": str(target_catalog)})


@pytest.fixture(scope="session")
def hub_with_target_synth(tmp_path_factory, target_catalog) -> Synth:
    """The hub stack of that catalog, given the target stack's outputs."""
    outputs = tmp_path_factory.mktemp("outputs") / "targets.json"
    outputs.write_text(json.dumps(TARGET_OUTPUTS))
    return synth(tmp_path_factory, {"catalog": str(target_catalog), "target_outputs": str(outputs)})
