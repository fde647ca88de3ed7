"""The isolated host itself: IMDSv2 emulator, network rule, relays, restart and crash cleanup."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sandbox.host import cleanup_leftovers
from sandbox.imds import ImdsData, ImdsEmulator
from sandbox.netns import Relay, list_netns

from .conftest import GATEWAY, STATE_ROOT, VPC_NAME, free_port, needs_root, wait_until

pytestmark = needs_root

SLEEPER = b"#!/bin/bash\necho ready\nexec sleep 600\n"


@pytest.fixture
def imds():
    data = ImdsData(
        instance_id="i-0123456789abcdef0", region="eu-west-1", local_ipv4="10.0.1.9",
        tags={"ec2hub:user": "Zoë $(x)", "Name": "n"}, role="ec2hub-notebook",
    )
    emulator = ImdsEmulator(data, netns=None, address="127.0.0.1", port=free_port()).start()
    yield f"http://127.0.0.1:{emulator.port}"
    emulator.stop()


def call(url, method="GET", headers=None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_imds_requires_a_v2_token(imds):
    assert call(f"{imds}/latest/meta-data/instance-id")[0] == 401
    assert call(f"{imds}/latest/api/token", "PUT")[0] == 400
    assert call(f"{imds}/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "99999"})[0] == 400
    status, token = call(f"{imds}/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200
    assert call(f"{imds}/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": "forged"})[0] == 401

    def get(path):
        return call(f"{imds}/latest/{path}", headers={"X-aws-ec2-metadata-token": token})

    assert get("meta-data/instance-id") == (200, "i-0123456789abcdef0")
    assert get("meta-data/placement/region") == (200, "eu-west-1")
    assert get("meta-data/placement/availability-zone") == (200, "eu-west-1a")
    assert get("meta-data/local-ipv4") == (200, "10.0.1.9")
    assert get("meta-data/tags/instance") == (200, "ec2hub:user\nName")
    assert get("meta-data/tags/instance/ec2hub:user") == (200, "Zoë $(x)")
    assert get("meta-data/tags/instance/missing")[0] == 404
    assert get("meta-data/iam/security-credentials/") == (200, "ec2hub-notebook")
    creds = json.loads(get("meta-data/iam/security-credentials/ec2hub-notebook")[1])
    assert creds["Code"] == "Success" and {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"} <= set(creds)
    assert json.loads(get("dynamic/instance-identity/document")[1])["region"] == "eu-west-1"


def _root_namespace():
    return (
        subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout,
        subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout,
        subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout,
    )


def test_hosts_add_nothing_to_the_root_namespace_and_route_nowhere(network, make_host):
    before = _root_namespace()
    host = make_host("i-0c00000000000000a", "10.0.1.30", {}, efs=False).start(SLEEPER)
    host.wait_for_console("^ready$")
    assert _root_namespace() == before
    # Inside: eth0 on the subnet, a default route that ends in the VPC namespace, which routes only
    # its own subnets.
    routes = host.exec(["ip", "-4", "route"]).stdout
    assert f"default via {GATEWAY} dev eth0" in routes and "10.0.1.0/24 dev eth0" in routes
    vpc_routes = subprocess.run(["ip", "-n", VPC_NAME, "-4", "route"], capture_output=True, text=True, check=True).stdout
    assert vpc_routes.strip().splitlines() == ["10.0.1.0/24 dev br0 proto kernel scope link src 10.0.1.1"]
    assert host.exec(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
    # Its own PID namespace (PID 1 is the host's init) and hostname.
    assert host.exec(["cat", "/proc/1/cmdline"]).stdout.startswith("/bin/bash")
    assert host.exec(["hostname"]).stdout.strip() == "ip-10-0-1-30"


def test_relay_listens_on_loopback_only_in_the_root_namespace():
    with pytest.raises(ValueError, match="loopback only"):
        Relay(listen=("0.0.0.0", 0), connect=("127.0.0.1", 1))


def test_restart_keeps_the_disk_and_terminate_removes_it(network, make_host):
    host = make_host("i-0c00000000000000b", "10.0.1.31", {}, efs=False)
    host.start(b"#!/bin/bash\ndate +%s%N >>/var/lib/boots\necho booted\nexec sleep 600\n")
    host.wait_for_console("booted")
    host.restart()
    wait_until(lambda: host.console_output.count("booted") == 2, 30, "second boot")
    assert len((host.upper / "var/lib/boots").read_text().split()) == 2
    host.terminate()
    assert not host.state_dir.exists()


def test_cleanup_after_a_crash_removes_processes_and_namespaces(network, make_host):
    host = make_host("i-0c00000000000000c", "10.0.1.32", {}, efs=False).start(SLEEPER)
    host.wait_for_console("^ready$")
    pid1 = host.pid1
    # The sandbox process "crashed": nothing called stop(). A new run cleans up by name.
    cleanup_leftovers(STATE_ROOT, VPC_NAME)
    assert not [n for n in list_netns() if n.startswith(VPC_NAME)]
    wait_until(lambda: not _alive(pid1), 10, "the crashed host's PID 1 to be gone")
    host.stop()  # the in-process IMDS thread of the "crashed" run


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_host_sees_the_machine_root_but_not_the_sandbox_state(network, make_host, tmp_path):
    private = tmp_path / "sandbox-state"
    private.mkdir()
    (private / "env.json").write_text("{}")
    host = make_host("i-0c00000000000000d", "10.0.1.33", {}, efs=False, hidden_paths=[private]).start(SLEEPER)
    host.wait_for_console("^ready$")
    assert host.exec(["ls", "-A", str(private)]).stdout == ""
    assert host.exec(["ls", "-A", str(STATE_ROOT)]).stdout == ""
    assert host.exec(["test", "-x", "/opt/ec2hub/venv/bin/jupyterhub-singleuser"]).returncode == 0
    # Writes stay in the overlay.
    host.exec(["touch", "/etc/ec2hub-written-inside"], check=True)
    assert (host.upper / "etc/ec2hub-written-inside").exists()
    assert not Path("/etc/ec2hub-written-inside").exists()


def test_the_host_has_no_access_to_the_machine_disks(network, make_host):
    host = make_host("i-0c00000000000000e", "10.0.1.34", {}, efs=False).start(SLEEPER)
    host.wait_for_console("^ready$")
    devices = set(host.exec(["ls", "/dev"]).stdout.split())
    assert {"null", "zero", "urandom", "pts", "ptmx", "shm"} <= devices
    assert not [d for d in devices if d.startswith(("vd", "sd", "nvme", "xvd", "loop"))], devices
    assert host.exec(["python3", "-c", "import os, pty; os.close(pty.openpty()[0])"]).returncode == 0
