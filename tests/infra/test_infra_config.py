"""Context values and input files: each mistake is a one-line error naming what to fix."""

from __future__ import annotations

import gzip
import random

import pytest
import yaml
from infra_testing import (
    CERT,
    REPO,
    REQUIRED_CONTEXT,
    ingress_rules,
    logical_id_by_description,
    synth,
)

from infra.config import KNOBS, ConfigError, config_from_context, load_config
from infra.settings import extra_config_files
from infra.userdata import MAX_USER_DATA_BYTES, load_user_data


def test_defaults():
    config = config_from_context(REQUIRED_CONTEXT)
    assert (config.hub_id, config.account, config.region) == (
        "ec2hub",
        "111111111111",
        "us-east-1",
    )
    assert (config.nat_gateways, config.vpc_endpoints, config.https) == (
        1,
        False,
        False,
    )
    assert config.settings_parameter_name == "/ec2hub/ec2hub/settings"
    assert config.secret_prefix == "/ec2hub/ec2hub/servers/"


def test_command_line_strings_are_parsed():
    config = config_from_context(
        {
            "nat_gateways": "2",
            "vpc_endpoints": "true",
            "hub_id": "lab-2",
            "admin_user": "alice",
            "allow_http": "true",
        }
    )
    assert (config.nat_gateways, config.vpc_endpoints, config.secret_prefix) == (
        2,
        True,
        "/ec2hub/lab-2/servers/",
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hub_id", "my_hub", "context hub_id: 'my_hub' is not a stack name"),
        ("account", "1234", "context account: '1234' is not a 12-digit account id"),
        ("region", "mars", "context region: 'mars' is not an AWS region"),
        ("nat_gateways", "0", "context nat_gateways: '0' must be between 1 and 2"),
        ("nat_gateways", "many", "context nat_gateways: 'many' is not a whole number"),
        (
            "vpc_endpoints",
            "maybe",
            "context vpc_endpoints: 'maybe' is not true or false",
        ),
        (
            "certificate_arn",
            "arn:aws:iam::1:cert",
            "context certificate_arn: 'arn:aws:iam::1:cert' is not an ACM",
        ),
        (
            "domain_name",
            "not a host",
            "context domain_name: 'not a host' is not a DNS name",
        ),
        (
            "admin_user",
            "al ice",
            "context admin_user: 'al ice' is not a plain user name",
        ),
        (
            "hub_instance_type",
            "t9.huge",
            "context hub_instance_type: 't9.huge' is not an EC2 instance type",
        ),
        (
            "allowed_ingress_cidr",
            "10.0.0.1/8",
            "context allowed_ingress_cidr: '10.0.0.1/8' is not an IPv4 network",
        ),
        (
            "log_retention_days",
            "42",
            "context log_retention_days: 42 is not a period CloudWatch Logs keeps logs for (one of 1, 3,",
        ),
        ("log_retention_days", "forever", "context log_retention_days: 'forever' is not a whole number"),
        ("alarm_email", "ops", "context alarm_email: 'ops' is not an email address"),
    ],
)
def test_bad_context_value_names_the_key(key, value, message):
    with pytest.raises(ConfigError) as raised:
        config_from_context({key: value})
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


NO_ADMIN = (
    "context admin_user: required: the user name of the hub's first admin "
    "(-c admin_user=<name>)"
)
NO_CERTIFICATE = (
    "context certificate_arn: required: an ACM certificate ARN for HTTPS "
    "(-c certificate_arn=arn:aws:acm:...), or -c allow_http=true to serve plain HTTP"
)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (
            {"allow_http": True},
            NO_ADMIN,
        ),
        (
            {"admin_user": "alice"},
            NO_CERTIFICATE,
        ),
        (
            {"admin_user": "alice", "allow_http": "false"},
            NO_CERTIFICATE,
        ),
    ],
)
def test_missing_required_value_is_one_line_naming_the_key(context, message):
    with pytest.raises(ConfigError) as raised:
        config_from_context(context)
    assert str(raised.value) == message


def test_https_needs_no_allow_http():
    config = config_from_context({"admin_user": "alice", "certificate_arn": CERT})
    assert config.https and not config.allow_http


def test_plain_http_only_when_asked():
    config = config_from_context({"admin_user": "alice", "allow_http": "true"})
    assert not config.https and config.allow_http


def test_user_data_within_the_limit_is_sent_verbatim(tmp_path):
    script = tmp_path / "user-data.sh"
    script.write_bytes(b"#!/bin/bash\necho hi\n")
    loaded = load_user_data(script)
    assert (
        loaded.payload == b"#!/bin/bash\necho hi\n"
        and not loaded.compressed
        and loaded.notice is None
    )


def test_user_data_over_the_limit_is_gzipped_deterministically(tmp_path):
    script = tmp_path / "user-data.sh"
    text = b"#!/bin/bash\n" + b"echo 'a line of a long bootstrap script'\n" * 1000
    script.write_bytes(text)
    first, second = load_user_data(script), load_user_data(script)
    assert first.compressed and len(first.payload) <= MAX_USER_DATA_BYTES
    assert gzip.decompress(first.payload) == text
    assert first.payload == second.payload
    assert "gzip-compressed" in first.notice


def test_user_data_too_big_even_compressed_is_refused(tmp_path):
    script = tmp_path / "user-data.sh"
    script.write_bytes(random.Random(1).randbytes(MAX_USER_DATA_BYTES + 1))
    with pytest.raises(
        ConfigError,
        match=r"user-data.sh: 16385 bytes \(\d+ gzip-compressed\), but EC2 accepts",
    ):
        load_user_data(script)


def test_narrowed_ingress_cidr_needs_no_open_ingress_acknowledgment(tmp_path_factory):
    narrowed = synth(tmp_path_factory, {"allowed_ingress_cidr": "203.0.113.0/24"})
    alb = logical_id_by_description(
        narrowed,
        "AWS::EC2::SecurityGroup",
        "ec2hub load balancer",
        key="GroupDescription",
    )
    assert [r["CidrIp"] for r in ingress_rules(narrowed, alb)] == ["203.0.113.0/24"]
    report = narrowed.aws_solutions_report()
    assert not any("EC23" in v["ruleName"] for v in report["suppressedViolations"])


# -- ec2hub.yaml ----------------------------------------------------------------------------------

GOOD_FILE = {
    "hub": {"hub_id": "lab"},
    "tls": {"allow_http": True},
    "identity": {"admin_user": "alice"},
}


def write_config(directory, data, name="ec2hub.yaml"):
    path = directory / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def test_repo_config_file_is_valid_and_documents_every_knob():
    # As shipped it has no certificate and refuses plain HTTP: a deploy must name one or the other.
    with pytest.raises(ConfigError) as refused:
        load_config({})
    assert str(refused.value) == (
        "ec2hub.yaml: tls.certificate_arn: required: an ACM certificate ARN for HTTPS, or allow_http: true "
        "to serve plain HTTP")
    config = load_config({"allow_http": "true"})
    assert (config.hub_id, config.admin_user, config.catalog_path) == (
        "ec2hub",
        "admin",
        REPO / "instance-classes.yaml",
    )
    assert config.load_catalog().slugs == ["small", "large-cpu", "gpu"]
    data = yaml.safe_load((REPO / "ec2hub.yaml").read_text())
    text = (REPO / "ec2hub.yaml").read_text()
    for section, key in KNOBS.values():
        # Each knob is in its section, with a comment line right above it.
        assert key in (data.get(section) or {}), f"ec2hub.yaml lacks {section}.{key}"
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}:"))
        assert lines[index - 1].strip().startswith("#"), f"{section}.{key} has no comment"


def test_file_values_reach_the_config_and_context_overrides_them(tmp_path):
    path = write_config(
        tmp_path,
        {**GOOD_FILE, "network": {"nat_gateways": 2, "vpc_endpoints": True},
         "tls": {"allow_http": True, "domain": "hub.example.org"},
         "limits": {"named_server_limit_per_user": 2}, "culling": {"idle_timeout": 600}},
    )
    config = load_config({}, path=path)
    assert (config.hub_id, config.nat_gateways, config.vpc_endpoints, config.domain_name) == (
        "lab", 2, True, "hub.example.org",
    )
    assert (config.named_server_limit_per_user, config.idle_timeout_s) == (2, 600)
    assert config.extra_config_dir == tmp_path / "jupyterhub_config.d"
    overridden = load_config(
        {"config": str(path), "nat_gateways": "1", "hub_id": "ci-7", "certificate_arn": CERT}, path=None
    )
    assert (overridden.hub_id, overridden.nat_gateways, overridden.https) == ("ci-7", 1, True)
    # An empty context value clears the file's value back to the default.
    assert load_config({}, path=path).domain_name == "hub.example.org"
    cleared = load_config({"domain_name": "", "nat_gateways": ""}, path=path)
    assert (cleared.domain_name, cleared.nat_gateways) == (None, 1)


def test_an_override_error_names_the_context_key(tmp_path):
    path = write_config(tmp_path, GOOD_FILE)
    with pytest.raises(ConfigError) as raised:
        load_config({"nat_gateways": "9"}, path=path)
    assert str(raised.value) == "context nat_gateways: '9' must be between 1 and 2"


def test_inline_catalog(tmp_path):
    classes = {
        "defaults": {"ami": "ami-0123456789abcdef0"},
        "classes": [{"slug": "tiny", "display_name": "Tiny", "instance_types": ["t3.micro"], "default": True}],
    }
    config = load_config({}, path=write_config(tmp_path, {**GOOD_FILE, "catalog": classes}))
    assert config.load_catalog().slugs == ["tiny"]
    # -c catalog=<file> wins over inline classes.
    again = load_config({"catalog": str(REPO / "instance-classes.yaml")}, path=tmp_path / "ec2hub.yaml")
    assert again.load_catalog().slugs == ["small", "large-cpu", "gpu"]


def test_catalog_path_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "conf").mkdir()
    path = write_config(tmp_path / "conf", {**GOOD_FILE, "catalog": {"path": "classes.yaml"}})
    assert load_config({}, path=path).catalog_path == tmp_path / "conf" / "classes.yaml"


BAD_CLASS = {"slug": "tiny", "display_name": "Tiny", "instance_types": ["t9.huge"],
             "ami": "ami-0123456789abcdef0", "default": True}

# name -> (file content, its one-line message)
BAD_FILES = {
    "unknown-section": (
        {**GOOD_FILE, "cluster": {"url": "x"}},
        ("ec2hub.yaml: unknown section 'cluster' (allowed: hub, network, tls, identity, limits, culling, spend, "
         "observability, database, images, catalog)"),
    ),
    "unknown-field": (
        {**GOOD_FILE, "network": {"nat_gateway": 2}},
        "ec2hub.yaml: network.nat_gateway: unknown field (allowed: allowed_ingress_cidr, nat_gateways, private_zone, vpc_endpoints)",
    ),
    "out-of-range": (
        {**GOOD_FILE, "network": {"nat_gateways": 5}},
        "ec2hub.yaml: network.nat_gateways: 5 must be between 1 and 2",
    ),
    "not-a-number": (
        {**GOOD_FILE, "culling": {"idle_timeout": "an hour"}},
        "ec2hub.yaml: culling.idle_timeout: 'an hour' is not a whole number",
    ),
    "not-a-bool": (
        {**GOOD_FILE, "tls": {"allow_http": "sometimes"}},
        "ec2hub.yaml: tls.allow_http: 'sometimes' is not true or false",
    ),
    "bad-pattern": (
        {**GOOD_FILE, "tls": {"allow_http": True, "domain": "not a host"}},
        "ec2hub.yaml: tls.domain: 'not a host' is not a DNS name",
    ),
    "wrong-type": (
        {**GOOD_FILE, "hub": {"hub_id": 42}},
        "ec2hub.yaml: hub.hub_id: must be a string, got 42",
    ),
    "bad-choice": (
        {**GOOD_FILE, "identity": {"admin_user": "alice", "authenticator": "ldap"}},
        "ec2hub.yaml: identity.authenticator: 'ldap' is not one of native, github, google, oidc, cognito",
    ),
    "section-not-mapping": (
        {**GOOD_FILE, "limits": [1, 2]},
        "ec2hub.yaml: limits: must be a mapping of settings",
    ),
    "no-admin": (
        {"tls": {"allow_http": True}},
        "ec2hub.yaml: identity.admin_user: required: the user name of the hub's first admin",
    ),
    "no-certificate": (
        {"identity": {"admin_user": "alice"}},
        (
            "ec2hub.yaml: tls.certificate_arn: required: an ACM certificate ARN for HTTPS, or "
            "allow_http: true to serve plain HTTP"
        ),
    ),
    "bad-inline-class": (
        {**GOOD_FILE, "catalog": {"classes": [BAD_CLASS]}},
        "ec2hub.yaml: catalog: class 'tiny': instance_types: 't9.huge' is not an EC2 instance type",
    ),
    "not-yaml": ("hub: [\n  hub_id: lab\n", "ec2hub.yaml: not valid YAML at line 3: expected ',' or ']', but got '<stream end>'"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_config_file_is_one_line_naming_section_and_field(tmp_path, name):
    content, message = BAD_FILES[name]
    with pytest.raises(ConfigError) as raised:
        load_config({}, path=write_config(tmp_path, content))
    assert str(raised.value) == message


def test_extra_config_files_travel_in_the_settings_in_name_order(tmp_path):
    directory = tmp_path / "jupyterhub_config.d"
    directory.mkdir()
    (directory / "20-later.py").write_text("c.JupyterHub.shutdown_on_logout = True\n")
    (directory / "10-first.py").write_text("c.Spawner.default_url = '/lab'\n")
    (directory / "notes.txt").write_text("not config\n")
    assert list(extra_config_files(directory).items()) == [
        ("10-first.py", "c.Spawner.default_url = '/lab'\n"),
        ("20-later.py", "c.JupyterHub.shutdown_on_logout = True\n"),
    ]
    assert extra_config_files(tmp_path / "absent") == {}


def test_extra_config_file_with_a_syntax_error_fails_the_synth_naming_it(tmp_path):
    directory = tmp_path / "jupyterhub_config.d"
    directory.mkdir()
    (directory / "10-broken.py").write_text("c.Spawner.default_url = '/lab'\nif True\n")
    with pytest.raises(ConfigError) as raised:
        extra_config_files(directory)
    assert str(raised.value) == "jupyterhub_config.d/10-broken.py: line 2: expected ':'"


def test_extra_config_file_name_the_hub_would_refuse_fails_the_synth(tmp_path):
    directory = tmp_path / "jupyterhub_config.d"
    directory.mkdir()
    (directory / "my config.py").write_text("c.Spawner.default_url = '/lab'\n")
    with pytest.raises(ConfigError) as raised:
        extra_config_files(directory)
    assert str(raised.value) == (
        "jupyterhub_config.d/my config.py: file names may have only letters, digits, '.', '_' and '-'"
    )
