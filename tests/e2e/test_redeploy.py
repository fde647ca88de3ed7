"""Redeploys into the running sandbox (`python -m sandbox deploy`, issue 10 "day two"): the current
tree synthesized and the stack updated in the emulator's CloudFormation, as `cdk deploy` does.

- Test 4: a settings-only change (a class's description) reaches the running hub within a minute,
  through the hub host's settings watcher, without replacing the hub host.
- A changed hub launch template (here a new hub AMI) replaces the hub host as the group's
  replacing update does: the new host boots and signals, then the old one goes; no notebook
  instance is stopped or terminated, sessions and passwords still work, running servers answer
  through the new hub and a stopped one resumes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from e2e_hub import ENV_FILE, HOSTS, REPO, Hub
from test_faults import running_server, sandbox_cli, wait_for
from test_hub_replacement import (
    hub_api_addresses,
    lease_holder_answers,
    settings,
    status_of,
)

from sandbox.runner import DEMO_USER, _Browser, admin_user, login

pytestmark = pytest.mark.slow


def group_instances(hub: Hub) -> list[str]:
    import boto3

    autoscaling = boto3.client("autoscaling", region_name=hub.env["region"], endpoint_url=hub.env["aws_endpoint_url"],
                               aws_access_key_id="sandbox", aws_secret_access_key="sandbox")
    [group] = autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    return [i["InstanceId"] for i in group["Instances"]]


def hub_journal(instance_id: str, unit: str) -> str:
    journal = HOSTS / instance_id / "upper/var/log/journal"
    return subprocess.run(["journalctl", f"--directory={journal}", f"--unit={unit}", "--output=cat", "--no-pager"],
                          capture_output=True, text=True, check=False).stdout


# A class the settings-only redeploy adds for two groups; the hub-replacing redeploy removes one of
# them from it and adds another class (issue 10's test 1). Copies of the small class: no other
# test uses them, and the sandbox has their image.
SHARED, ADDED = "team-small", "extra-small"
GROUPS_BEFORE, GROUPS_AFTER = ["staff", "gpu-team"], ["staff"]
GROUPIE = "redeploy-groupie"  # in gpu-team only


def catalog_with(tmp_path: Path, slug: str, description: str, *, groups: list[str], added: bool = False) -> Path:
    catalog = yaml.safe_load((REPO / "instance-classes.yaml").read_text())
    [cls] = [c for c in catalog["classes"] if c["slug"] == slug]
    cls["description"] = description
    [small] = [c for c in catalog["classes"] if c["slug"] == "small"]
    extra = [(SHARED, groups)] + ([(ADDED, [])] if added else [])
    for new_slug, allowed in extra:
        catalog["classes"].append({**small, "slug": new_slug, "display_name": f"Redeploy test {new_slug}",
                                   "default": False, "allowed_groups": allowed})
    path = tmp_path / "instance-classes.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


def class_groups(hub: Hub) -> dict[str, list[str]]:
    return {c["slug"]: c.get("allowed_groups", []) for c in settings(hub)["classes"]}


def in_group(hub: Hub, group: str, user: str) -> None:
    """``user`` made and put in ``group``, by the admin (the sandbox's API token has no admin:groups)."""
    hub.create_user(user)
    admin = _Browser(hub.url)
    login(admin, admin_user(), hub.env["users"][admin_user()])
    admin.post_json(f"/hub/api/groups/{group}", {"users": [user]})


def test_a_settings_only_change_reaches_the_running_hub_without_replacing_it(hub, tmp_path):
    host = hub.env["hub_instance_id"]
    slug = settings(hub)["classes"][0]["slug"]
    description = f"Redeployed at {time.time():.0f}: the settings watcher brought this"
    admin = _Browser(hub.url)
    login(admin, admin_user(), hub.env["users"][admin_user()])
    assert description not in admin.get("/hub/spawn")

    path = catalog_with(tmp_path, slug, description, groups=GROUPS_BEFORE)
    done = sandbox_cli("deploy", "-c", f"catalog={path}", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    deployed = time.monotonic()
    assert "unchanged (version 1): the hub host stays" in done.stdout, done.stdout
    assert [c["description"] for c in settings(hub)["classes"] if c["slug"] == slug] == [description]
    assert class_groups(hub)[SHARED] == GROUPS_BEFORE

    def form_shows_it():
        try:
            return description in admin.get("/hub/spawn")
        except OSError:  # the hub restarting
            return False

    wait_for(form_shows_it, 120, "the new description in the options form")
    applied_s = time.monotonic() - deployed
    print(f"settings_applied_s={applied_s:.1f}")
    assert applied_s < 60, f"the settings reached the hub {applied_s:.0f} s after the deploy"
    # The same hub host, the group unchanged; the watcher named the version it applied.
    assert json.loads(ENV_FILE.read_text())["hub_instance_id"] == host
    assert group_instances(hub) == [host]
    assert hub.instance(host)["State"]["Name"] == "running"
    version = hub.ssm.get_parameter(Name=f"/ec2hub/{hub.env['stack_name']}/settings")["Parameter"]["Version"]
    watched = hub_journal(host, "ec2hub-settings-watch.service")
    assert f"version {version} is not the document the hub started with: restarting ec2hub-hub.service" in watched, \
        watched
    # The hub's every-start step wrote the new document (after the first start's).
    applied = [line for line in hub_journal(host, "ec2hub-hub.service").splitlines() if "settings.json from" in line]
    assert len(applied) >= 2 and applied[-1].endswith(f"version {version} written (hub {hub.env['stack_name']}, "
                                                      f"4 classes, auth native)"), applied


def test_a_new_hub_ami_replaces_the_hub_host_and_loses_nothing(hub, tmp_path):
    # The hub-replacement test's servers when it ran before in this session (else started here).
    running = {name: running_server(hub, name) for name in ("replace-a",)}
    stopped = "replace-b"
    running_server(hub, stopped)
    hub.stop(stopped)
    session = _Browser(hub.url)
    login(session, DEMO_USER, hub.env["users"][DEMO_USER])
    notebooks = {i["InstanceId"]: i["State"]["Name"] for i in hub.all_notebook_instances()}
    old = hub.env["hub_instance_id"]

    # With the host, the catalog changes: a class is added, and a group leaves a class.
    in_group(hub, "gpu-team", GROUPIE)
    slug = settings(hub)["classes"][0]["slug"]
    catalog = catalog_with(tmp_path, slug, "Redeployed with a new hub host", groups=GROUPS_AFTER, added=True)

    started = time.monotonic()
    done = sandbox_cli("deploy", "-c", "hub_ami=ami-0feedfacecafe0001", "-c", f"catalog={catalog}", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    new = re.search(r"hub host replaced by (i-[0-9a-f]+)", out).group(1)
    print(f"redeploy_s={time.monotonic() - started:.1f}")
    # The replacing update's order: the new host boots and signals before the old one goes.
    assert out.index(f"hub host {new} launched") < out.index(f"hub host {new} signalled SUCCESS") \
        < out.index("terminating " + old), out
    hub.env["hub_instance_id"] = new
    assert hub.instance(old)["State"]["Name"] in ("shutting-down", "terminated")
    assert hub.instance(new)["ImageId"] == "ami-0feedfacecafe0001"
    assert group_instances(hub) == [new]
    wait_for(lambda: lease_holder_answers(hub), 240, "the new hub to take the hub lease")
    # The hub API's name follows the lease to the new host: at its start if the old hub's lease was
    # free then, else by its watcher once its hub took the lease (bootstrap/ec2hub_bootstrap/hub.py).
    new_ip = hub.instance(new)["PrivateIpAddress"]
    wait_for(lambda: hub_api_addresses(hub) == [new_ip], 60, "the hub API's name at the new host")

    # No notebook instance was stopped or terminated by the redeploy.
    after = {i["InstanceId"]: i["State"]["Name"] for i in hub.all_notebook_instances()}
    assert {iid: after.get(iid) for iid in notebooks} == notebooks
    # The session from before is still signed in, and the password works.
    assert json.loads(session.get("/hub/api/user"))["name"] == DEMO_USER
    login(_Browser(hub.url), DEMO_USER, hub.env["users"][DEMO_USER])
    for name in running:
        status, reply = wait_for(lambda n=name: (answer := status_of(hub, n))[0] == 200 and answer, 120,
                                 f"{name}'s server answering through the new hub")
        assert status == 200, reply
    model = hub.start(stopped)
    assert model["ready"], model

    # The new hub has the new catalog: the added class is offered, and the group that left a
    # class gets the 403 (before this deploy it may have been allowed, by the settings-only test).
    assert class_groups(hub)[SHARED] == GROUPS_AFTER and ADDED in class_groups(hub)
    admin = _Browser(hub.url)
    login(admin, admin_user(), hub.env["users"][admin_user()])
    assert f'value="{ADDED}"' in admin.get("/hub/spawn")
    status, reply = hub.api("POST", f"/users/{GROUPIE}/server", {"user_options": {"instance_class": SHARED}})
    assert status == 403, (status, reply)
    assert reply["message"].startswith(f"Instance class '{SHARED}' is not available to your groups: use one of: "), \
        reply
    assert not hub.instances(GROUPIE)
