"""app.py and the CDK CLI: a bad catalog is one line on stderr; `cdk synth` works offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from ec2spawner.catalog import CatalogError, load_catalog
from infra_testing import REPO

GOOD_CLASS = {
    "slug": "small",
    "display_name": "Small",
    "instance_types": ["t3.medium"],
    "ami": "ami-0123456789abcdef0",
    "default": True,
}


def catalog(*classes, **top):
    return yaml.safe_dump({"classes": list(classes), **top}, sort_keys=False)


# name -> (catalog text, a fragment its one-line message must contain)
BAD_CATALOGS = {
    "unknown-instance-type": (
        catalog({**GOOD_CLASS, "instance_types": ["t9.huge"]}),
        "class 'small': instance_types: 't9.huge' is not an EC2 instance type",
    ),
    "duplicate-slug": (
        catalog(GOOD_CLASS, {**GOOD_CLASS, "default": False}),
        "class 'small': slug: 'small' is used by two classes",
    ),
    "two-defaults": (
        catalog(GOOD_CLASS, {**GOOD_CLASS, "slug": "big"}),
        "default: exactly one class must have default: true (found 'small', 'big')",
    ),
    "no-default": (
        catalog({**GOOD_CLASS, "default": False}),
        "default: exactly one class must have default: true (found none)",
    ),
    "bad-slug": (
        catalog({**GOOD_CLASS, "slug": "Big_GPU"}),
        "class 'Big_GPU': slug: String should match pattern",
    ),
    "volume-too-small": (
        catalog({**GOOD_CLASS, "volume_gb": 4}),
        "class 'small': volume_gb: Input should be greater than or equal to 8",
    ),
    "unknown-field": (
        catalog({**GOOD_CLASS, "colour": "blue"}),
        "class 'small': colour: unknown field (allowed: ",
    ),
    "bad-ami": (
        catalog({**GOOD_CLASS, "ami": "ami-xyz"}),
        "class 'small': ami: String should match pattern",
    ),
    "wrong-market": (
        catalog({**GOOD_CLASS, "market": "reserved"}),
        "class 'small': market: Input should be 'on-demand' or 'spot'",
    ),
    "not-yaml": ("classes: [\n  - slug: small\n", "not valid YAML at line"),
}


def clean_env(**extra):
    """The Makefile's environment, offline and without AWS credentials."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and not k.startswith("CDK_")
    }
    env.update(
        PATH=f"{REPO}/node_modules/.bin:{REPO}/.venv/bin:{env.get('PATH', '')}",
        JSII_RUNTIME_PACKAGE_CACHE_ROOT=str(REPO / ".cache/jsii"),
        CDK_HOME=str(REPO / ".cache/cdk"),
        CDK_DISABLE_VERSION_CHECK="1",
        CDK_DISABLE_CLI_TELEMETRY="true",
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def bad_catalog_runs(tmp_path_factory):
    """Run app.py once per bad catalog, all at once (each run is a fresh Python process)."""
    directory = tmp_path_factory.mktemp("bad-catalogs")

    def run(name):
        path = directory / f"{name}.yaml"
        path.write_text(BAD_CATALOGS[name][0])
        result = subprocess.run(
            [sys.executable, "app.py"],
            cwd=REPO,
            env=clean_env(
                CDK_CONTEXT_JSON=json.dumps({"catalog": str(path), "allow_http": True}),
                CDK_OUTDIR=str(directory / name),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return path, result

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(BAD_CATALOGS, pool.map(run, BAD_CATALOGS)))


@pytest.mark.parametrize("name", sorted(BAD_CATALOGS))
def test_bad_catalog_is_one_line_error_and_nonzero_exit(bad_catalog_runs, name):
    path, result = bad_catalog_runs[name]
    with pytest.raises(CatalogError) as raised:
        load_catalog(path)
    message = str(raised.value)
    assert message.startswith(f"{path.name}: ")
    assert BAD_CATALOGS[name][1] in message
    assert "\n" not in message
    assert result.returncode == 1
    assert result.stderr == f"error: {message}\n"
    assert "Traceback" not in result.stdout + result.stderr


def cdk_synth(outdir, *args):
    """``cdk synth --quiet -o <outdir> [args]`` from the repo root, offline."""
    return subprocess.run(
        [
            str(REPO / "node_modules/.bin/cdk"),
            "synth",
            "--quiet",
            "-o",
            str(outdir),
            *args,
        ],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cdk_synth_cli_writes_the_template_offline(tmp_path):
    # ec2hub.yaml has everything but a certificate: plain HTTP, asked for by name (as make synth does).
    outdir = tmp_path / "cdk.out"
    result = cdk_synth(outdir, "-c", "allow_http=true")
    assert result.returncode == 0, result.stderr[-3000:]
    template = json.loads((outdir / "ec2hub.template.json").read_text())
    assert any(
        r["Type"] == "AWS::EC2::LaunchTemplate" for r in template["Resources"].values()
    )
    # The CLI shows the synth-time warning about plain HTTP.
    assert "plain HTTP" in result.stdout + result.stderr
    # cdk.json's context is valid for the CLI (no reserved keys) and it turns path metadata on.
    assert "reserved context key" not in result.stdout + result.stderr
    assert any(
        "aws:cdk:path" in r.get("Metadata", {}) for r in template["Resources"].values()
    )


def test_cli_reads_another_config_file_and_context_values_override_it(tmp_path):
    config = tmp_path / "ec2hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hub": {"hub_id": "lab"},
                "network": {"nat_gateways": 1},
                "tls": {"allow_http": True},
                "identity": {"admin_user": "alice"},
                "catalog": {"path": str(REPO / "instance-classes.yaml")},
            }
        )
    )
    outdir = tmp_path / "cdk.out"
    result = cdk_synth(outdir, "-c", f"config={config}", "-c", "nat_gateways=2")
    assert result.returncode == 0, result.stderr[-3000:]
    template = json.loads((outdir / "lab.template.json").read_text())
    types = [r["Type"] for r in template["Resources"].values()]
    assert types.count("AWS::EC2::NatGateway") == 2
    (parameter,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::SSM::Parameter"
    ]
    assert parameter["Properties"]["Name"] == "/ec2hub/lab/settings"


# name -> (ec2hub.yaml text, the one line app.py prints)
BAD_CONFIGS = {
    "no-certificate": (
        "identity:\n  admin_user: alice\n",
        (
            "ec2hub.yaml: tls.certificate_arn: required: an ACM certificate ARN for HTTPS, or "
            "allow_http: true to serve plain HTTP"
        ),
    ),
    "unknown-field": (
        "tls:\n  allow_http: true\n  certificate: x\nidentity:\n  admin_user: alice\n",
        "ec2hub.yaml: tls.certificate: unknown field (allowed: allow_http, certificate_arn, domain)",
    ),
    "bad-value": (
        "tls:\n  allow_http: true\nidentity:\n  admin_user: al ice\n",
        "ec2hub.yaml: identity.admin_user: 'al ice' is not a plain user name",
    ),
}


@pytest.fixture(scope="module")
def bad_config_runs(tmp_path_factory):
    """app.py once per bad ec2hub.yaml, all at once, as `cdk synth -c config=<file>` runs it."""

    def run(name):
        directory = tmp_path_factory.mktemp(name)
        path = directory / "ec2hub.yaml"
        path.write_text(BAD_CONFIGS[name][0])
        return subprocess.run(
            [sys.executable, "app.py"],
            cwd=REPO,
            env=clean_env(
                CDK_CONTEXT_JSON=json.dumps({"config": str(path)}),
                CDK_OUTDIR=str(directory / "cdk.out"),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(BAD_CONFIGS, pool.map(run, BAD_CONFIGS)))


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_file_fails_synth_with_one_line(bad_config_runs, name):
    result = bad_config_runs[name]
    assert result.returncode == 1
    assert result.stderr == f"error: {BAD_CONFIGS[name][1]}\n"
    assert "Traceback" not in result.stdout + result.stderr
