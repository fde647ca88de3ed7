"""Pure parts of the notebook launcher embedded in bootstrap/notebook/user-data.sh."""

from __future__ import annotations

import re

import pytest

from .conftest import NOTEBOOK_USER_DATA, load_launcher


@pytest.fixture(scope="module")
def launcher():
    return load_launcher(NOTEBOOK_USER_DATA, "EC2HUB_LAUNCHER")


@pytest.mark.parametrize(
    "hub_user, expected",
    [
        ("alice", "jupyter-alice"),
        ("bob-smith", "jupyter-bob-smith"),
        ("root", "jupyter-root"),  # never a system account
        ("x" * 24, "jupyter-" + "x" * 24),
        ("Alice", "jupyter-alice---3bc51062"),  # not already safe: slug + hash
        ("a--b", "jupyter-a-b---90827a2e"),  # "--" is reserved for hashed names
        ("bob-", "jupyter-bob---671cc3ed"),
        ("ünï", "jupyter-n---e975a529"),
        ("名前", "jupyter-x---7ec26292"),  # nothing ASCII left: a placeholder letter
        ("$(touch /tmp/pwned)", "jupyter-touch-tmp-pwn---5890c122"),
        ("x" * 25, "jupyter-xxxxxxxxxxxxx---c28e601c"),  # too long: truncated + hash
    ],
)
def test_unix_name_is_a_deterministic_safe_slug(launcher, hub_user, expected):
    name = launcher.unix_name(hub_user)
    assert name == expected
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,31}", name)
    assert launcher.unix_name(hub_user) == name


def test_unix_names_of_different_users_differ(launcher):
    users = ["alice", "Alice", "ALICE", "alice!", "alice?", "a lice", "a-lice", "a--lice", "x" * 40, "x" * 41]
    assert len({launcher.unix_name(u) for u in users}) == len(users)


@pytest.mark.parametrize(
    "value",
    ['plain', 'quote " and \\ backslash', "dollar $HOME and `id` and $(id)", '{"scopes": ["a", "b"]}', "üñí"],
)
def test_env_file_round_trips_without_a_shell(launcher, value):
    env = {"JUPYTERHUB_API_TOKEN": "abc", "VALUE": value}
    assert launcher.parse_env_file(launcher.env_file_text(env)) == env


def test_unit_is_hardened(launcher):
    import pwd

    user = pwd.struct_passwd(("jupyter-alice", "x", 1001, 1001, "", "/home/jupyter-alice", "/bin/bash"))
    unit = launcher.unit_text(user, "/home/jupyter-alice")
    for line in [
        "User=jupyter-alice",
        "EnvironmentFile=/etc/ec2hub/singleuser.env",
        "ExecStart=/opt/ec2hub/venv/bin/jupyterhub-singleuser --ip=0.0.0.0 --port=8888",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/home/jupyter-alice",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "Restart=on-failure",
    ]:
        assert line in unit.splitlines()
