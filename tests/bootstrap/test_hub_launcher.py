"""Pure parts of the hub launcher (bootstrap/ec2hub_bootstrap/hub.py): the state secrets it turns
into the hub service's environment."""

from __future__ import annotations

import pytest
from ec2hub_bootstrap import hub as launch

RDS_SECRET = {  # what RDS's secret attachment makes of the stack's generated credentials
    "engine": "postgres",
    "username": "ec2hub",
    "password": "Zx9kQ2mN7pL4vB8cR1tY6wE3uI5oA0sD",
    "host": "ec2hub-db.abcdefghijkl.us-east-1.rds.amazonaws.com",
    "port": 5432,
    "dbname": "jupyterhub",
    "dbInstanceIdentifier": "ec2hub-db",
}


def test_database_url_is_psycopg_with_tls_required_from_the_rds_secret():
    assert launch.database_url(RDS_SECRET) == (
        "postgresql+psycopg://ec2hub:Zx9kQ2mN7pL4vB8cR1tY6wE3uI5oA0sD@"
        "ec2hub-db.abcdefghijkl.us-east-1.rds.amazonaws.com:5432/jupyterhub?sslmode=require"
    )


def test_database_url_quotes_what_a_url_cannot_hold():
    url = launch.database_url({**RDS_SECRET, "password": "a@b/c:d", "port": "5432"})
    assert url.startswith("postgresql+psycopg://ec2hub:a%40b%2Fc%3Ad@ec2hub-db.")


def test_an_incomplete_database_secret_is_refused_without_showing_its_values():
    secret = {k: v for k, v in RDS_SECRET.items() if k != "host"}
    with pytest.raises(ValueError) as raised:
        launch.database_url(secret)
    assert "needs username, password, host, port and dbname" in str(raised.value)
    assert RDS_SECRET["password"] not in str(raised.value)


@pytest.mark.parametrize("value, ok", [
    ("0" * 64, True), ("ab" * 32 + "\n", True), ("AB" * 32, False), ("0" * 63, False), ("g" * 64, False),
])
def test_cookie_secret_and_proxy_token_are_64_hex_digits(value, ok):
    if ok:
        assert launch.hex_secret(value) == value.strip()
    else:
        with pytest.raises(ValueError, match="is not 64 hex digits"):
            launch.hex_secret(value)


def test_environment_file_round_trips_and_refuses_what_systemd_would_unquote():
    values = {"JPY_COOKIE_SECRET": "ab" * 32, "EC2HUB_DB_URL": launch.database_url(RDS_SECRET)}
    text = launch.environment_file(values)
    assert text == f'EC2HUB_DB_URL="{values["EC2HUB_DB_URL"]}"\nJPY_COOKIE_SECRET="{"ab" * 32}"\n'
    assert launch.read_environment_file(text) == values
    for bad in ('a"b', "a\\b", "a\nb", "a$b", "a`b"):
        with pytest.raises(ValueError, match="X: a character systemd would unquote"):
            launch.environment_file({"X": bad})


def test_the_unit_reads_the_environment_file_the_launcher_writes():
    unit = (launch.SOURCES / launch.UNIT_NAME).read_text()
    assert f"EnvironmentFile=-{launch.ENV_FILE}" in unit.splitlines()
    assert launch.ENV_FILE.startswith("/run/")  # tmpfs: never on the host's disk
