"""Context values and input files: each mistake is a one-line error naming what to fix."""

from __future__ import annotations

import gzip
import random

import pytest
from infra_testing import (
    CERT,
    REQUIRED_CONTEXT,
    ingress_rules,
    logical_id_by_description,
    synth,
)

from infra.config import ConfigError, config_from_context
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
