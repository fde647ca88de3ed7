"""The sandbox's fault verbs at the command line, against the running sandbox: `inject outage`,
`inject kill-hub` and `status` (who owns each instance, what the sweeper intends)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import boto3
import botocore.config
import botocore.exceptions
import pytest
from e2e_hub import REPO, Hub

from sandbox.emulator import EmulatorClient

pytestmark = pytest.mark.slow


def sandbox_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def hub_answers(hub: Hub) -> bool:
    try:
        status, _ = hub.api("GET", "/", timeout=5)
    except OSError:
        return False
    return status == 200


def running_server(hub: Hub, name: str) -> str:
    """Start ``name``'s server if needed; its instance id."""
    hub.create_user(name)
    model = hub.server_model(name)
    if not (model and model.get("ready")):
        hub.start(name)
    [instance] = hub.instances(name, states=("running",))
    return instance["InstanceId"]


def test_inject_outage_fails_aws_calls_then_recovers_and_the_server_is_kept(hub):
    name = "faults-outage"
    iid = running_server(hub, name)
    once = botocore.config.Config(retries={"mode": "standard", "max_attempts": 1})
    ec2 = boto3.client("ec2", region_name=hub.env["region"], endpoint_url=hub.env["aws_endpoint_url"],
                       aws_access_key_id="sandbox", aws_secret_access_key="sandbox", config=once)
    done = sandbox_cli("inject", "outage", "--seconds", "8")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outage_s"] > 0
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        ec2.describe_instances(InstanceIds=[iid])
    control = EmulatorClient(hub.env["aws_endpoint_url"])
    wait_for(lambda: control.state()["outage_s"] == 0, 30, "the outage to end by itself")
    assert hub.instance(iid)["State"]["Name"] == "running"
    # The hub polled through the outage: the server is still its, and answers through the proxy.
    model = hub.server_model(name)
    assert model and model["ready"], model
    status, reply = hub.server_api(name, "GET", "/status")
    assert status == 200, reply


def test_status_shows_each_instance_owner_and_the_sweepers_intent(hub):
    name = "faults-status"
    iid = running_server(hub, name)
    done = sandbox_cli("status")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("i-")}
    assert f"{name} (ready)" in lines[iid] and "keep: owned" in lines[iid], done.stdout
    hub_line = lines[hub.env["hub_instance_id"]]
    assert "(hub host)" in hub_line and "never swept" in hub_line, done.stdout


def test_inject_kill_hub_is_restarted_by_its_service_manager_and_keeps_servers(hub):
    name = "faults-kill"
    iid = running_server(hub, name)
    done = sandbox_cli("inject", "kill-hub")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["systemd"], "the hub host runs no systemd: nothing restarts the hub"
    assert result["killed"] and result["restarted"] and set(result["restarted"]).isdisjoint(result["killed"])
    wait_for(lambda: hub_answers(hub), 120, "the restarted hub's API")
    model = wait_for(lambda: (m := hub.server_model(name)) and m.get("ready") and m, 120,
                     "the server to be ready again")
    assert model["url"] == f"/user/{name}/"
    assert [i["InstanceId"] for i in hub.instances(name)] == [iid]
    status, reply = hub.server_api(name, "GET", "/status")
    assert status == 200, reply
