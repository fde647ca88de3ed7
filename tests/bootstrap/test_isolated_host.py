"""The isolated host itself: a booted machine (systemd as PID 1, cloud-init with the Ec2 datasource
against the IMDSv2 emulator), the network rule, relays, reboot/stop/start, GPU device nodes and
crash cleanup."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sandbox.host import cleanup_leftovers, machine_units_to_mask
from sandbox.imds import ImdsData, ImdsEmulator
from sandbox.netns import Relay, list_netns

from .conftest import GATEWAY, STATE_ROOT, VPC_NAME, free_port, needs_root, wait_until

pytestmark = needs_root

SLEEPER = b"#!/bin/bash\necho ready\n"
# User data that installs and starts a service, as the bootstrap scripts do: the service must come
# back at every boot by systemd alone, the user data must run once per instance id.
ONCE = b"""#!/bin/bash
echo "ec2hub-test: user data ran"
date +%s%N >>/var/lib/ec2hub-test-runs
cat >/etc/systemd/system/ec2hub-test.service <<'UNIT'
[Unit]
Description=ec2hub test service
[Service]
ExecStart=/bin/sh -c 'echo "ec2hub-test: service up"; exec sleep infinity'
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now ec2hub-test.service
"""


@pytest.fixture
def imds():
    data = ImdsData(
        instance_id="i-0123456789abcdef0", region="eu-west-1", local_ipv4="10.0.1.9",
        tags={"ec2hub:user": "Zoë $(x)", "Name": "n"}, role="ec2hub-notebook",
    )
    emulator = ImdsEmulator(data, netns=None, address="127.0.0.1", port=free_port()).start()
    yield f"http://127.0.0.1:{emulator.port}"
    emulator.stop()


def test_imds_serves_the_user_data_bytes_as_launched():
    data = ImdsData(instance_id="i-0123456789abcdef0", user_data=gzip.compress(b"#!/bin/sh\necho hi\n"))
    with ImdsEmulator(data, netns=None, address="127.0.0.1", port=free_port()) as emulator:
        base = f"http://127.0.0.1:{emulator.port}"
        token = call(f"{base}/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[1]
        request = urllib.request.Request(f"{base}/2021-03-23/user-data", headers={"X-aws-ec2-metadata-token": token})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert gzip.decompress(resp.read()) == b"#!/bin/sh\necho hi\n"


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
    # cloud-init asks dated API versions and crawls directories.
    for version in ("2009-04-04", "2021-03-23"):
        status, body = call(f"{imds}/{version}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token})
        assert (status, body) == (200, "i-0123456789abcdef0")
    status, listing = call(f"{imds}/2021-03-23/dynamic/instance-identity/", headers={"X-aws-ec2-metadata-token": token})
    assert (status, listing) == (200, "document")
    assert {"instance-id", "local-hostname", "placement/", "tags/"} <= set(get("meta-data/")[1].splitlines())
    assert get("meta-data/local-hostname") == (200, "ip-10-0-1-9.eu-west-1.compute.internal")
    assert get("user-data")[0] == 404  # launched without user data
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
    assert host.wait_for_user_data() == 0
    assert _root_namespace() == before
    # Inside: eth0 on the subnet, a default route that ends in the VPC namespace, which routes only
    # its own subnets.
    routes = host.exec(["ip", "-4", "route"]).stdout
    assert f"default via {GATEWAY} dev eth0" in routes and "10.0.1.0/24 dev eth0" in routes
    vpc_routes = subprocess.run(["ip", "-n", VPC_NAME, "-4", "route"], capture_output=True, text=True, check=True).stdout
    assert vpc_routes.strip().splitlines() == ["10.0.1.0/24 dev br0 proto kernel scope link src 10.0.1.1"]
    assert host.exec(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
    assert host.exec(["hostname"]).stdout.strip() == "ip-10-0-1-30"


def test_relay_listens_on_loopback_only_in_the_root_namespace():
    with pytest.raises(ValueError, match="loopback only"):
        Relay(listen=("0.0.0.0", 0), connect=("127.0.0.1", 1))


def test_a_host_boots_systemd_and_cloud_init_runs_its_user_data_from_imds(network, make_host):
    host = make_host("i-0c00000000000000f", "10.0.1.35", {}, efs=False).start(SLEEPER)
    assert host.wait_for_user_data() == 0
    assert re.search(r"^cloud-init\[\d+\]: ready$", host.console_output, re.MULTILINE), host.logs
    # systemd is PID 1 of the host, every unit came up.
    assert host.exec(["readlink", "/proc/1/exe"]).stdout.strip().endswith("/systemd")
    assert host.exec(["systemctl", "is-system-running", "--wait"], timeout=60).stdout.strip() == "running", (
        host.exec(["systemctl", "--failed", "--no-pager"]).stdout)
    # cloud-init took the platform for AWS and fetched its data over IMDSv2 (a token, then GETs).
    status = json.loads(host.exec(["cloud-init", "query", "--all"]).stdout)
    assert (status["cloud_name"], status["instance_id"]) == ("aws", "i-0c00000000000000f")
    requests = host._imds.requests
    assert requests[0] == "PUT /latest/api/token" and "GET /2021-03-23/user-data" in requests
    # The VPC's dnsmasq answered cloud-init's DHCP with the instance's address, and its resolver
    # answers every name at once (NXDOMAIN), so nothing waited on a timeout.
    assert "Received dhcp lease on eth0 for 10.0.1.35/255.255.255.0" in (host.upper / "var/log/cloud-init.log").read_text()
    started = time.monotonic()
    assert host.exec(["getent", "hosts", "example.invalid"]).returncode == 2
    assert time.monotonic() - started < 5  # a resolver that never answers: 5 s per try
    # The machine's own services are no part of the image: masked there.
    for unit in machine_units_to_mask():
        assert host.exec(["systemctl", "is-enabled", unit]).stdout.strip() == "masked", unit


def test_user_data_runs_once_per_instance_and_its_service_comes_back_at_every_boot(network, make_host):
    host = make_host("i-0c00000000000000b", "10.0.1.31", {}, efs=False).start(ONCE)
    assert host.wait_for_user_data() == 0
    host.wait_for_console("ec2hub-test: service up")
    host.reboot()  # systemctl reboot inside: nspawn exits 133, the supervisor boots it again
    host.wait_for_boot()
    assert host.running and host.boots == 2
    host.stop()  # systemctl poweroff, as StopInstances
    assert "Reached target poweroff.target" in host.console_output
    host.start()
    host.wait_for_boot()
    wait_until(lambda: host.console_output.count("ec2hub-test: service up") == 3, 30, "the service at the third boot")
    assert host.console_output.count("ec2hub-test: user data ran") == 1, host.console_output
    assert len((host.upper / "var/lib/ec2hub-test-runs").read_text().split()) == 1  # the disk survived
    assert host.exec(["systemctl", "is-active", "ec2hub-test.service"]).stdout.strip() == "active"
    host.terminate()
    assert not host.state_dir.exists()


def test_a_new_instance_runs_the_user_data_again(network, make_host):
    first = make_host("i-0c00000000000000d0", "10.0.1.36", {}, efs=False).start(ONCE)
    assert first.wait_for_user_data() == 0
    first.terminate()
    second = make_host("i-0c00000000000000d1", "10.0.1.36", {}, efs=False).start(ONCE)
    assert second.wait_for_user_data() == 0
    assert second.console_output.count("ec2hub-test: user data ran") == 1


def test_a_gpu_host_has_nvidia_device_nodes(network, make_host):
    host = make_host("i-0c00000000000000e0", "10.0.1.37", {}, efs=False, gpus=1).start(SLEEPER)
    host.wait_for_user_data()
    listing = host.exec(["stat", "-c", "%n %F %t:%T", "/dev/nvidia0", "/dev/nvidiactl"]).stdout.split("\n")
    assert listing[:2] == ["/dev/nvidia0 character special file c3:0", "/dev/nvidiactl character special file c3:ff"]


def test_cleanup_after_a_crash_removes_processes_and_namespaces(network, make_host):
    host = make_host("i-0c00000000000000c", "10.0.1.32", {}, efs=False).start(SLEEPER)
    host.wait_for_user_data()
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
    host.wait_for_user_data()
    assert host.exec(["ls", "-A", str(private)]).stdout == ""
    assert host.exec(["ls", "-A", str(STATE_ROOT)]).stdout == ""
    assert host.exec(["test", "-x", "/opt/ec2hub/venv/bin/jupyterhub-singleuser"]).returncode == 0
    # Writes stay in the overlay.
    host.exec(["touch", "/etc/ec2hub-written-inside"], check=True)
    assert (host.upper / "etc/ec2hub-written-inside").exists()
    assert not Path("/etc/ec2hub-written-inside").exists()


def test_the_host_has_no_access_to_the_machine_disks(network, make_host):
    host = make_host("i-0c00000000000000e", "10.0.1.34", {}, efs=False).start(SLEEPER)
    host.wait_for_user_data()
    devices = set(host.exec(["ls", "/dev"]).stdout.split())
    assert {"null", "zero", "urandom", "pts", "ptmx", "shm"} <= devices
    assert not [d for d in devices if d.startswith(("vd", "sd", "nvme", "xvd", "loop", "nvidia"))], devices
    assert host.exec(["python3", "-c", "import os, pty; os.close(pty.openpty()[0])"]).returncode == 0


def test_a_boot_marker_printed_before_popen_returns_is_this_boot(network, make_host, monkeypatch):
    """On a loaded machine the supervisor can print "ec2hub-host: booting" before Popen returns
    to the sandbox; that boot is still the one waited for (not a second one that never comes)."""
    import sandbox.host

    real_popen = subprocess.Popen

    class LatePopen(real_popen):
        """Returns only once the child has printed its boot marker: the scheduling that lost it."""

        def __init__(self, argv, *args, **kwargs):
            super().__init__(argv, *args, **kwargs)
            if "ec2hub-supervisor" in argv:
                console = Path(kwargs["stdout"].name)
                wait_until(lambda: b"ec2hub-host: booting" in console.read_bytes(), 30, "the boot marker")

    monkeypatch.setattr(sandbox.host.subprocess, "Popen", LatePopen)
    host = make_host("i-0c0000000000000b1", "10.0.1.41", {}, efs=False).start(SLEEPER)
    monkeypatch.undo()
    assert host.wait_for_user_data() == 0
    assert host.boots == 1
