"""The hub host is lost (issue 10, test 2): terminated in EC2, a new one comes up by itself and
finds every user, server and session, because nothing the hub keeps lives on its disk (the
database is the sandbox's PostgreSQL playing RDS; the cookie secret and proxy token are in Secrets
Manager).

The new host is launched by the sandbox's hub host keeper, which stands in for the issue's Auto
Scaling group of one (sandbox.runner.HubHostKeeper): the stack has no group yet. It has another
private address; servers started before reach it at the hub API's stable name, which the new host
points at itself at its start (infra/dns.py; the VPC's DNS follows the zone, sandbox.route53).
"""

from __future__ import annotations

import json
import time

import pytest
from e2e_hub import ENV_FILE, Hub
from ec2spawner.hubconfig import HEALTH_PATH
from test_faults import hub_answers, running_server, sandbox_cli, wait_for

from sandbox.runner import DEMO_USER, _Browser, login

pytestmark = pytest.mark.slow

HUB_DNS_NAME = "hub.ec2hub.internal"  # ec2hub.yaml's network.private_zone, which the sandbox deploys


def lease_holder_answers(hub: Hub) -> bool:
    """The new hub's health check (the load balancer's): 200 only once it holds the hub lease,
    which the lost hub's last renewal keeps for up to its duration (ec2spawner.lease)."""
    try:
        status, _ = hub.request("GET", "/hub" + HEALTH_PATH, timeout=5)
    except OSError:
        return False
    return status == 200


def settings(hub: Hub) -> dict:
    """The hub settings document the stack wrote (infra/settings.py)."""
    name = f"/ec2hub/{hub.env['stack_name']}/settings"
    return json.loads(hub.ssm.get_parameter(Name=name)["Parameter"]["Value"])


def hub_api_addresses(hub: Hub) -> list[str]:
    """The addresses of the hub API's A record, as the emulator's Route 53 holds it."""
    document = settings(hub)
    records = hub.route53.list_resource_record_sets(HostedZoneId=document["hub_dns_zone_id"])["ResourceRecordSets"]
    return [v["Value"] for r in records if (r["Name"], r["Type"]) == (document["hub_dns_name"] + ".", "A")
            for v in r["ResourceRecords"]]


def status_of(hub: Hub, name: str):
    """The server's own /api/status through the proxy, which it answers only after checking the
    caller's token with the hub API (at the address it was told when it started)."""
    try:
        return hub.server_api(name, "GET", "/status")
    except OSError as error:  # TimeoutError, or the connection closed without an answer
        return None, f"no answer: {error}"


def test_terminate_the_hub_host_and_a_new_one_recovers_every_server_and_session(hub):
    running = {name: running_server(hub, name) for name in ("replace-a", "replace-b")}
    stopped = "replace-stopped"
    running_server(hub, stopped)
    hub.stop(stopped)
    session = _Browser(hub.url)
    login(session, DEMO_USER, hub.env["users"][DEMO_USER])
    notebooks_before = {i["InstanceId"] for i in hub.all_notebook_instances()}

    old = hub.env["hub_instance_id"]
    old_ip = hub.instance(old)["PrivateIpAddress"]
    assert hub_api_addresses(hub) == [old_ip]  # the first hub claimed the name at its start
    secret_prefix = hub.secret_prefix()
    started = time.monotonic()
    done = sandbox_cli("inject", "terminate", old)
    assert done.returncode == 0, done.stdout + done.stderr
    new = wait_for(lambda: (iid := json.loads(ENV_FILE.read_text())["hub_instance_id"]) != old and iid, 180,
                   "a new hub host in the old one's place")
    hub.env["hub_instance_id"] = new  # for the tests after this one
    wait_for(lambda: hub_answers(hub), 240, "the new hub's API through the load balancer's stand-in")
    answered_s = time.monotonic() - started
    wait_for(lambda: lease_holder_answers(hub), 240, "the new hub to take the hub lease")
    acting_s = time.monotonic() - started
    print(f"hub_replacement answered_s={answered_s:.1f} acting_s={acting_s:.1f}")
    assert hub.instance(old)["State"]["Name"] == "terminated"

    # Every running server is found again, on its own instance, and routed by the new proxy.
    for name, iid in running.items():
        model = wait_for(lambda n=name: (m := hub.server_model(n)) and m.get("ready") and m, 180,
                         f"{name}'s server ready behind the new hub")
        assert model["url"] == f"/user/{name}/"
        assert [i["InstanceId"] for i in hub.instances(name)] == [iid]
    # No notebook instance was stopped or terminated by the loss of the hub.
    states = {i["InstanceId"]: i["State"]["Name"] for i in hub.all_notebook_instances()}
    assert {iid: states.get(iid) for iid in running.values()} == dict.fromkeys(running.values(), "running")
    assert notebooks_before <= set(states)
    # The session from before is still signed in (the same cookie secret), and the password works.
    assert json.loads(session.get("/hub/api/user"))["name"] == DEMO_USER
    login(_Browser(hub.url), DEMO_USER, hub.env["users"][DEMO_USER])
    # The server stopped before the loss starts again under the new hub (it holds the lease).
    model = hub.start(stopped)
    assert model["ready"], model
    status, reply = hub.server_api(stopped, "GET", "/status")
    assert status == 200, reply

    # The servers started before the loss were told the hub API's stable name (infra/dns.py), not
    # the lost host's private address; the new host pointed that name at itself at its start, so
    # they check their users' tokens with the new hub (issue 10's "replaceable hub host").
    new_ip = hub.instance(new)["PrivateIpAddress"]
    assert new_ip != old_ip
    # At its start, or (if the lost hub's lease had not expired yet) once it took the lease.
    wait_for(lambda: hub_api_addresses(hub) == [new_ip], 60, "the hub API's name at the new host")
    for name, iid in running.items():
        env = json.loads(hub.ssm.get_parameter(Name=secret_prefix + iid, WithDecryption=True)["Parameter"]["Value"])
        assert env["JUPYTERHUB_API_URL"] == f"http://{HUB_DNS_NAME}:8081/hub/api", env["JUPYTERHUB_API_URL"]
        status, reply = wait_for(lambda n=name: (answer := status_of(hub, n))[0] == 200 and answer, 60,
                                 f"{name}'s server answering with the new hub")
        assert status == 200, reply
