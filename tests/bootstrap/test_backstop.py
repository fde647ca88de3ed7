"""The idle backstop on a booted notebook instance: with no hub answering, an idle instance powers
itself off and EC2 (the emulator) reports it stopped (issue 12, docs/ARCHITECTURE.md §15).

As in the sandbox: the emulator (its own process) is EC2's control plane; the data plane
(:class:`sandbox.dataplane.DataPlane`) boots each instance it launches as an isolated host with
systemd and cloud-init, from the notebook user data as infra assembles it, and reports a host that
powers itself off to EC2 by its shutdown behaviour. Nothing answers at the hub's address. The
limits are seconds, in the server's secret as the spawner writes them; the test waits on states.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import boto3
import pytest

from sandbox.dataplane import DataPlane
from sandbox.emulator import EmulatorClient

from .conftest import (
    AWS_ENDPOINT_PORT,
    GATEWAY,
    NOTEBOOK_USER_DATA,
    REGION,
    STATE_ROOT,
    Network,
    needs_root,
    notebook_tags,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
from chaos_lab import (
    EmulatorProcess,  # the emulator in a process of its own, as the chaos lab runs it
)

pytestmark = [needs_root, pytest.mark.slow]

SECRET_PREFIX = "/ec2hub/ec2hub-test/servers/"


@pytest.fixture
def ec2_world(tmp_path, request):
    """The emulator, the VPC with the emulator at its gateway, and the data plane following EC2's events."""
    emulator = EmulatorProcess(tmp_path / "emulator.log", pending_s=0.3).start()
    kw = {"region_name": REGION, "endpoint_url": emulator.endpoint_url,
          "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    ec2, ssm = boto3.client("ec2", **kw), boto3.client("ssm", **kw)
    network = Network(emulator.endpoint_url)
    plane = DataPlane(ec2=ec2, vpc=network.vpc, region=REGION, endpoint_port=AWS_ENDPOINT_PORT,
                      efs_root=tmp_path / "efs", state_root=STATE_ROOT, console_dir=tmp_path / "consoles")
    control, done = EmulatorClient(emulator.endpoint_url), threading.Event()

    def follow():
        after = 0
        while not done.is_set():
            try:
                answer = control.events(after, timeout=1)
            except OSError:
                continue
            after = answer["last"]
            for event in answer["events"]:
                plane.handle(event)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        yield ec2, ssm, plane
    finally:
        done.set()
        follower.join(10)
        if getattr(getattr(request.node, "rep_call", None), "failed", True):
            for host in plane.hosts.values():
                sys.stderr.write(host.logs)
        plane.close()
        network.close()
        emulator.stop()


def state_of(ec2, iid: str) -> str:
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_idle_instance_with_no_hub_powers_itself_off_and_ec2_sees_it_stopped(ec2_world):
    ec2, ssm, plane = ec2_world
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    tags = notebook_tags("alice", efs=None)
    [instance] = ec2.run_instances(
        ImageId="ami-12345678", InstanceType="t3.medium", MinCount=1, MaxCount=1, SubnetId=subnet,
        UserData=NOTEBOOK_USER_DATA, InstanceInitiatedShutdownBehavior="stop",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )["Instances"]
    iid = instance["InstanceId"]
    # The server's secret as the spawner writes it, with a hub at an address where nothing answers.
    hub_api = f"http://{GATEWAY}:8081/hub/api"
    env = {
        "JUPYTERHUB_API_TOKEN": "0123456789abcdef0123456789abcdef", "JUPYTERHUB_API_URL": hub_api,
        "JUPYTERHUB_ACTIVITY_URL": f"{hub_api}/users/alice/activity", "JUPYTERHUB_USER": "alice",
        "JUPYTERHUB_SERVER_NAME": "", "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/",
        "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/alice/", "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-alice",
        "JUPYTERHUB_BASE_URL": "/", "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/alice/oauth_callback",
        "EC2HUB_IDLE_TIMEOUT_S": "3", "EC2HUB_MAX_AGE_S": "0", "EC2HUB_ACTIVITY_INTERVAL_S": "1",
        "EC2HUB_BACKSTOP_GRACE_S": "3",
        # The machine's CPUs are every instance's here (/proc/stat is the machine's): CPU does not count.
        "EC2HUB_BUSY_CPUS": "1000",
    }
    ssm.put_parameter(Name=SECRET_PREFIX + iid, Type="SecureString", Value=json.dumps(env))

    wait_until(lambda: iid in plane.hosts, 60, "the data plane to boot the instance")
    host = plane.hosts[iid]
    wait_until(lambda: "ec2hub-activity: start: server started" in host.console_output, 180,
               "the activity agent to read the server's limits")
    wait_until(lambda: state_of(ec2, iid) == "stopped", 120, "EC2 to report the instance stopped")
    console = host.console_output
    assert "ec2hub-activity: hub: does not answer" in console
    assert "ec2hub-activity: backstop: powering off: idle for" in console
    assert "(idle_timeout 3 s) and no answer from the hub for" in console
    assert not host.running
    assert plane.errors == {}
