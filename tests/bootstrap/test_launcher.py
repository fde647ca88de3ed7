"""Pure parts of the notebook launcher (bootstrap/ec2hub_bootstrap/notebook.py) and its units."""

from __future__ import annotations

import pwd
import re
import shutil
import sys

import pytest
from ec2hub_bootstrap import notebook as launch

from .conftest import REPO


@pytest.fixture(scope="module")
def launcher():
    return launch


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


UNIT = REPO / "bootstrap/notebook/ec2hub-singleuser.service"
GPU_UNIT = REPO / "bootstrap/notebook/ec2hub-nvidia.service"
ALICE = pwd.struct_passwd(("jupyter-alice", "x", 1001, 1001, "", "/home/jupyter-alice", "/bin/bash"))


def unit_lines(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_unit_is_hardened():
    lines = unit_lines(UNIT)
    for line in [
        "EnvironmentFile=-/etc/ec2hub/singleuser.env",
        "ExecStart=/opt/ec2hub/venv/bin/jupyterhub-singleuser --ip=0.0.0.0 --port=8888",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "CapabilityBoundingSet=",
        "UMask=0077",
        "ProtectProc=invisible",
        "PrivateMounts=yes",
        "RemoveIPC=yes",
    ]:
        assert line in lines, line


def test_unit_lets_the_server_reach_the_gpu_and_nothing_else():
    """PrivateDevices=yes hides /dev/nvidia* (CUDA finds no device); what it implied stays."""
    lines = unit_lines(UNIT)
    assert "PrivateDevices=no" in lines and "PrivateDevices=yes" not in lines
    assert "DevicePolicy=closed" in lines  # only pseudo devices plus what DeviceAllow= lists
    assert [line for line in lines if line.startswith("DeviceAllow=")] == [
        "DeviceAllow=char-pts rw",
        "DeviceAllow=char-nvidia* rw",  # nvidia-frontend (nvidia0.., nvidiactl), nvidia-uvm, nvidia-caps
    ]
    assert "SystemCallFilter=~@clock @module @mount @raw-io @reboot @swap" in lines  # @raw-io: as PrivateDevices did
    # The GPU nodes are made before each start, and before DeviceAllow= resolves device groups.
    assert "Wants=network-online.target ec2hub-nvidia.service" in lines
    assert any(line.startswith("After=") and "ec2hub-nvidia.service" in line for line in lines)
    gpu = unit_lines(GPU_UNIT)
    assert "Type=oneshot" in gpu and "Before=ec2hub-singleuser.service" in gpu
    assert next(line for line in gpu if line.startswith("ExecStart=")).endswith("-m ec2hub_bootstrap.notebook gpu")


def test_every_start_fetches_the_secret_as_root_before_the_server():
    pre = [line for line in unit_lines(UNIT) if line.startswith("ExecStartPre=")]
    assert pre == [
        (
            "ExecStartPre=+/usr/bin/env -i HOME=/root LANG=C.UTF-8 "
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=/opt/ec2hub/bootstrap "
            "/opt/ec2hub/venv/bin/python -m ec2hub_bootstrap.notebook prestart"
        )
    ]
    assert launch.COMMANDS["prestart"] is launch.prestart


def test_dropin_names_the_user_and_home():
    lines = launch.dropin_text(ALICE, "/home/jupyter-alice").splitlines()
    for line in [
        "User=jupyter-alice",
        "Group=1001",
        "WorkingDirectory=/home/jupyter-alice",
        "ReadWritePaths=/home/jupyter-alice",
        "RequiresMountsFor=/home/jupyter-alice",
    ]:
        assert line in lines


def test_dropin_puts_the_users_own_packages_in_the_home_over_the_image():
    lines = launch.dropin_text(ALICE, "/home/jupyter-alice").splitlines()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert [line for line in lines if line.startswith("Environment=")] == [
        "Environment=PIP_PREFIX=/home/jupyter-alice/.local",
        f"Environment=PYTHONPATH=/home/jupyter-alice/.local/lib/{version}/site-packages",
        "Environment=PATH=/home/jupyter-alice/.local/bin:/opt/ec2hub/venv/bin:/usr/local/bin:/usr/bin:/bin",
    ]


def test_gpu_step_without_driver_tools_does_nothing_and_succeeds(monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert launch.ensure_gpu_devices() == []
    assert "no NVIDIA driver tools (nvidia-smi, nvidia-modprobe): nothing to set up" in capsys.readouterr().out


def test_gpu_step_runs_the_driver_tools_and_survives_their_failure(monkeypatch, tmp_path, capsys):
    # A GPU image on a CPU instance: the tools exist and fail; the server must start anyway.
    for tool in ("nvidia-smi", "nvidia-modprobe"):
        script = tmp_path / tool
        script.write_text(f"#!/bin/sh\necho \"$0 $*\" >>{tmp_path}/calls\nexit 9\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert launch.ensure_gpu_devices() == ["nvidia-smi", "nvidia-modprobe"]
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"{tmp_path}/nvidia-smi -L", f"{tmp_path}/nvidia-modprobe -u -c 0"
    ]
    assert "nvidia-smi -L failed (9)" in capsys.readouterr().out


def test_without_systemd_the_server_runs_the_units_own_command():
    from ec2hub_bootstrap.host import unit_command

    argv, env = unit_command(UNIT.read_text())
    assert argv == ["/opt/ec2hub/venv/bin/jupyterhub-singleuser", "--ip=0.0.0.0", "--port=8888"]
    assert env == {"PATH": "/opt/ec2hub/venv/bin:/usr/local/bin:/usr/bin:/bin"}
    argv, env = unit_command((REPO / "bootstrap/hub/ec2hub-hub.service").read_text())
    assert argv == ["/opt/ec2hub/venv/bin/jupyterhub", "-f", "/etc/ec2hub/jupyterhub_config.py"]
    assert env == {
        "HOME": "/var/lib/ec2hub", "PATH": "/opt/ec2hub/venv/bin:/opt/ec2hub/node/bin:/usr/local/bin:/usr/bin:/bin"
    }
