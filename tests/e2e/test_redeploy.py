"""Redeploys into the running sandbox (`python -m sandbox deploy`, issue 10 "day two"): the current
tree synthesized and the stack updated in the emulator's CloudFormation, as `cdk deploy` does.

- Test 4: a settings-only change (a class's description) reaches the running hub within a minute,
  through the hub host's settings watcher, without replacing the hub host.
- Test 1: a redeploy with a new hub AMI, a changed hub bootstrap, a class added and a group removed
  from a class replaces the hub host as the group's replacing update does (the new host boots and
  signals, then the old one goes); no notebook instance is stopped or terminated, every user signs
  in with the same password, running servers answer through the new hub, a stopped one resumes.
- Test 3, in the same redeploy's cleanup held open (``--pause-before-cleanup``): two hub hosts
  alive at once, and only the lease holder changes EC2. The standby is asked, through its own
  proxy, to start and to stop servers, and its sweeper runs over a server the holder is starting
  (which the standby's database cannot know yet); the emulator's trail shows no EC2 change made
  with the standby's credentials, and the holder's start succeeds. After the cleanup the new hub,
  which stood by, restarts once it takes the lease (ec2spawner.lease), so the server the old hub
  started meanwhile answers through it too.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
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

from sandbox.emulator import EmulatorClient
from sandbox.imds import instance_access_key
from sandbox.netns import Relay
from sandbox.runner import DEMO_USER, VPC_NAME, _Browser, admin_user, login

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
# them from it and adds another class (issue 10's test 1). Both also have a class whose stopped
# servers keep their instance (stop_mode stop), for test 1's server "stopped and kept for resume".
# Copies of the small class: no other test uses them, and the sandbox has their image.
SHARED, ADDED, KEPT = "team-small", "extra-small", "kept-small"
GROUPS_BEFORE, GROUPS_AFTER = ["staff", "gpu-team"], ["staff"]
GROUPIE = "redeploy-groupie"  # in gpu-team only


def catalog_with(tmp_path: Path, slug: str, description: str, *, groups: list[str], added: bool = False) -> Path:
    catalog = yaml.safe_load((REPO / "instance-classes.yaml").read_text())
    [cls] = [c for c in catalog["classes"] if c["slug"] == slug]
    cls["description"] = description
    [small] = [c for c in catalog["classes"] if c["slug"] == "small"]
    extra = [(SHARED, groups, {}), (KEPT, [], {"stop_mode": "stop"})] + ([(ADDED, [], {})] if added else [])
    for new_slug, allowed, more in extra:
        catalog["classes"].append({**small, "slug": new_slug, "display_name": f"Redeploy test {new_slug}",
                                   "default": False, "allowed_groups": allowed, **more})
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
                                                      f"5 classes, auth native)"), applied


# -- test 1 with test 3 in its cleanup ---------------------------------------------------------------

# Three users with running servers and one with a stopped one (test 1); reused from the tests of
# test_hub_replacement.py and test_faults.py when they ran before in this session (else started here).
RUNNING, STOPPED = ("replace-a", "replace-stopped", "faults-status"), "redeploy-kept"
STANDBY_STOPS = "faults-kill"  # a running server the standby is asked to stop
HOLDER_STARTS = "redeploy-holder"  # a server the lease holder starts while the standby is alive
# The deployment's jupyterhub_config.d file of the redeploy: an orphan grace and sweep interval short
# enough for the standby's sweeper to see the holder's start, in flight, as an orphan within the test.
SWEEP_CONFIG = "c.EC2Spawner.orphan_grace = 10.0\nc.EC2Spawner.sweep_interval = 5.0\n"
ORPHAN_GRACE_S = 10.0
# What may change EC2 or a server's secret (the trail's actions).
EC2_CHANGES = {"RunInstances", "StartInstances", "StopInstances", "TerminateInstances", "RebootInstances",
               "CreateTags", "DeleteTags", "ModifyInstanceAttribute", "PutParameter", "DeleteParameter"}


def signed_up(hub: Hub, name: str) -> str:
    """``name`` with a NativeAuthenticator password (signed up as a person does, authorized by
    the admin; an existing hub user keeps its servers); the password."""
    password = secrets.token_urlsafe(12)
    browser = _Browser(hub.url)
    browser.get("/hub/signup")
    status, page = browser.post_form("/hub/signup", {"username": name, "signup_password": password,
                                                     "signup_password_confirmation": password})
    # NativeAuthenticator answers 200 either way, with <div class="alert alert-..." role="alert">.
    alert = re.search(r'<div class="alert (alert-\w+)" role="alert">(.*?)</div>', page, re.DOTALL)
    assert status == 200 and alert and alert.group(1) != "alert-danger", (status, alert and alert.group(2))
    admin = _Browser(hub.url)
    login(admin, admin_user(), hub.env["users"][admin_user()])
    admin.get(f"/hub/authorize/{hub.quote(name)}")
    return password


def servers_running(hub: Hub, names) -> dict[str, str]:
    """Every one of ``names`` with a running server, those not running started at once; instance ids."""
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return dict(zip(names, pool.map(lambda name: running_server(hub, name), names), strict=True))


def checkout_with_a_changed_hub_bootstrap(tmp_path: Path, announcement: str) -> Path:
    """A copy of the repository's app, as an admin's next checkout: its hub bootstrap's config
    (bootstrap/hub/jupyterhub_config.py, which the hub user data carries) also shows a login-page
    announcement, and its jupyterhub_config.d/ has :data:`SWEEP_CONFIG`."""
    source = tmp_path / "checkout"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", ".pytest_cache", "build")
    for name in ("app.py", "cdk.json", "ec2hub.yaml", "instance-classes.yaml"):
        shutil.copy2(REPO / name, source / name)
    for name in ("infra", "bootstrap", "spawner", "jupyterhub_config.d"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    config = source / "bootstrap" / "hub" / "jupyterhub_config.py"
    config.write_text(config.read_text() + "\n# The redeploy test's change of the hub bootstrap.\n"
                      f"c.JupyterHub.template_vars = {{**c.JupyterHub.template_vars, "
                      f"'announcement_login': {announcement!r}}}\n")
    (source / "jupyterhub_config.d" / "90-redeploy-test.py").write_text(SWEEP_CONFIG)
    return source


class PausedDeploy:
    """``python -m sandbox deploy --pause-before-cleanup`` in the background, its output collected."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "sandbox", "deploy", "--pause-before-cleanup", *args],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def paused(self) -> bool:
        assert self.proc.poll() is None or "paused before the cleanup" in self.out, self.out
        return "paused before the cleanup" in self.out

    def go_on(self, timeout: float = 300) -> str:
        self.proc.stdin.write("\n")
        self.proc.stdin.close()
        returncode = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        assert returncode == 0, self.out
        return self.out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def on_host(hub: Hub, instance_id: str) -> tuple[Hub, Relay]:
    """The hub on ``instance_id`` through its own proxy (port 8000 in the VPC), not the load balancer's."""
    relay = Relay(listen=("127.0.0.1", 0), connect=(hub.instance(instance_id)["PrivateIpAddress"], 8000),
                  connect_netns=f"{VPC_NAME}-{instance_id}", name=f"e2e-{instance_id}").start()
    return Hub({**hub.env, "hub_url": f"http://127.0.0.1:{relay.port}"}), relay


def lease_health(hub: Hub) -> tuple[int | None, dict]:
    try:
        status, body = hub.request("GET", "/hub/ec2hub/health", timeout=5)
    except OSError:
        return None, {}
    return status, body if isinstance(body, dict) else {}


def journal_since(instance_id: str, unit: str, since: float) -> str:
    journal = HOSTS / instance_id / "upper/var/log/journal"
    return subprocess.run(["journalctl", f"--directory={journal}", f"--unit={unit}", f"--since=@{since:.0f}",
                           "--output=cat", "--no-pager"], capture_output=True, text=True, check=False).stdout


def only_the_lease_holder_changes_ec2(hub: Hub, old: str, new: str, control: EmulatorClient, held: int,
                                      asked_to_stop: str) -> str:
    """Issue 10's test 3, with the replacement's two hub hosts alive: returns the holder's instance."""
    hubs, relays = {}, []
    try:
        for iid in (old, new):
            hubs[iid], relay = on_host(hub, iid)
            relays.append(relay)
        # Each hub answers; one holds the lease, the other stands by (usually the old one holds it:
        # its restart for the new settings may hand it to the new one, so the roles are read).
        health = wait_for(lambda: (h := {i: lease_health(x) for i, x in hubs.items()})
                          and sorted(code or 0 for code, _ in h.values()) == [200, 503] and h, 120,
                          "one hub holding the lease and the other standing by")
        holder = next(i for i, (code, _) in health.items() if code == 200)
        standby = new if holder == old else old
        assert health[standby][1]["lease"] == "standby", health
        assert f"is standing by: another hub ({holder}) holds the lease" in health[standby][1]["detail"], health
        print(f"two hubs alive: {holder} holds the lease, {standby} stands by")
        before = {i["InstanceId"]: i["State"]["Name"] for i in hub.all_notebook_instances()}
        mark = len(control.trail())

        # The holder starts a server; its instance is held pending, so the start is in flight and
        # the hub database does not name the instance yet (JupyterHub saves state after start()).
        starting = threading.Thread(target=hubs[holder].api, daemon=True,
                                    args=("POST", f"/users/{HOLDER_STARTS}/server", {"user_options": {}}))
        starting.start()
        [launched] = wait_for(lambda: hub.instances(HOLDER_STARTS), 60, "the holder's RunInstances")

        # The standby, through its own proxy: a start is refused with the 503 that says why ...
        status, reply = hubs[standby].api("POST", f"/users/{STOPPED}/server", {"user_options": {"instance_class": KEPT}})
        assert status == 503 and "This hub is standing by while another hub takes over" in reply["message"], \
            (status, reply)
        # ... a stop changes nothing in EC2 (JupyterHub records the server stopped; the spawner
        # keeps its instance, running, for the next start on the holder) ...
        status, reply = hubs[standby].api("DELETE", f"/users/{STANDBY_STOPS}/server")
        assert status in (202, 204), (status, reply)
        # ... and its sweeper, every 5 s with a 10 s grace, sees the holder's instance in flight
        # as no server's (a hub acting without the lease would terminate it), and sweeps nothing.
        aged = launched["LaunchTime"].timestamp() + ORPHAN_GRACE_S
        wait_for(lambda: time.time() > aged + 1 and f"ec2hub sweeper: not sweeping: this hub ({standby}) is standing by"
                 in journal_since(standby, "ec2hub-hub.service", aged), 60,
                 "a sweep of the standby after the holder's instance passed the orphan grace")
        assert (datetime.now(UTC) - launched["LaunchTime"]).total_seconds() > ORPHAN_GRACE_S
        assert hub.instance(launched["InstanceId"])["State"]["Name"] == "pending"
        standby_log = journal_since(standby, "ec2hub-hub.service", time.time() - 600)
        assert f"{STANDBY_STOPS}: not stopping {asked_to_stop}: this hub ({standby}) is standing by" in standby_log, \
            standby_log[-4000:]
        assert f"{STOPPED}: not starting: this hub ({standby}) is standing by" in standby_log
        assert f"this hub ({standby}) is standing by: another hub ({holder}) holds the lease" in standby_log

        # The holder's start goes on and succeeds, on the instance it launched.
        control.release(held)
        starting.join(timeout=60)
        model = wait_for(lambda: (m := hubs[holder].server_model(HOLDER_STARTS)) and m.get("ready") and m, 180,
                         "the holder's server ready")
        assert [i["InstanceId"] for i in hub.instances(HOLDER_STARTS)] == [launched["InstanceId"]], model

        # No EC2 change by the standby: every instance as it was (the holder's new one running), and
        # the trail has no change signed with the standby's credentials, while it has the holder's.
        after = {i["InstanceId"]: i["State"]["Name"] for i in hub.all_notebook_instances()}
        assert after == {**before, launched["InstanceId"]: "running"}, (before, after)
        trail = control.trail()[mark:]
        by = {iid: [c for c in trail if c["access_key_id"] == instance_access_key(iid)] for iid in (holder, standby)}
        assert not [c for c in by[standby] if c["action"] in EC2_CHANGES], by[standby]
        assert "RunInstances" in [c["action"] for c in by[holder]], by[holder]
        return holder
    finally:
        for relay in relays:
            relay.stop()


def with_the_kept_class(hub: Hub, tmp_path: Path) -> None:
    """The settings-only test's catalog (which has :data:`KEPT`) on the hub: deployed here if that
    test has not run in this session."""
    admin = _Browser(hub.url)
    login(admin, admin_user(), hub.env["users"][admin_user()])
    if KEPT in class_groups(hub):
        return
    tmp_path.mkdir()
    slug = settings(hub)["classes"][0]["slug"]
    done = sandbox_cli("deploy", "-c", f"catalog={catalog_with(tmp_path, slug, 'Kept', groups=GROUPS_BEFORE)}",
                       timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    def offered():
        try:
            return f'value="{KEPT}"' in admin.get("/hub/spawn")
        except OSError:  # the hub restarting
            return False

    wait_for(offered, 120, f"the class {KEPT} in the options form")


def test_a_redeploy_with_a_new_hub_image_and_bootstrap_replaces_the_hub_host_and_loses_nothing(hub, tmp_path):
    with_the_kept_class(hub, tmp_path / "before")
    hub.create_user(HOLDER_STARTS)
    hub.create_user(STOPPED)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the kept one beside the others
        starting = pool.submit(hub.start, STOPPED, {"instance_class": KEPT})
        running = servers_running(hub, (*RUNNING, STANDBY_STOPS))
        starting.result()
    asked_to_stop = running.pop(STANDBY_STOPS)
    hub.stop(STOPPED)
    [kept] = hub.instances(STOPPED)
    assert kept["State"]["Name"] in ("stopping", "stopped"), kept
    kept = kept["InstanceId"]
    passwords = {name: signed_up(hub, name) for name in (*RUNNING, STOPPED)}
    sessions = {}
    for name, password in {**passwords, DEMO_USER: hub.env["users"][DEMO_USER]}.items():
        sessions[name] = _Browser(hub.url)
        login(sessions[name], name, password)
    notebooks = {i["InstanceId"]: i["State"]["Name"] for i in hub.all_notebook_instances()}
    old = hub.env["hub_instance_id"]

    # With the host and its bootstrap, the catalog changes: a class is added, and a group leaves a class.
    in_group(hub, "gpu-team", GROUPIE)
    slug = settings(hub)["classes"][0]["slug"]
    catalog = catalog_with(tmp_path, slug, "Redeployed with a new hub host", groups=GROUPS_AFTER, added=True)
    announcement = f"Redeployed hub bootstrap {secrets.token_hex(4)}"
    source = checkout_with_a_changed_hub_bootstrap(tmp_path, announcement)
    assert announcement not in _Browser(hub.url).get("/hub/login")

    control = EmulatorClient(hub.env["aws_endpoint_url"])
    held = control.hold("pending", f"ec2hub:user={HOLDER_STARTS}")["id"]
    started = time.monotonic()
    deploy = PausedDeploy("--source", str(source), "-c", "hub_ami=ami-0feedfacecafe0001", "-c", f"catalog={catalog}")
    try:
        wait_for(deploy.paused, 600, "the replacement's cleanup to pause with both hub hosts alive")
        new = re.search(r"hub host (i-[0-9a-f]+) launched", deploy.out).group(1)
        # The old hub has applied the new settings (its watcher restarted it) before the two are compared.
        version = hub.ssm.get_parameter(Name=f"/ec2hub/{hub.env['stack_name']}/settings")["Parameter"]["Version"]
        wait_for(lambda: f"version {version} is not the document the hub started with"
                 in hub_journal(old, "ec2hub-settings-watch.service"), 120, "the old hub's restart for the new settings")
        holder = only_the_lease_holder_changes_ec2(hub, old, new, control, held, asked_to_stop)
        out = deploy.go_on()
    finally:
        control.release(held)
        deploy.kill()
    running[HOLDER_STARTS] = hub.instances(HOLDER_STARTS)[0]["InstanceId"]
    assert f"hub host replaced by {new}" in out, out
    print(f"redeploy_s={time.monotonic() - started:.1f} (the holder was {holder})")
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
    # The new host runs the changed hub bootstrap: its hub's login page has the announcement.
    assert announcement in _Browser(hub.url).get("/hub/login")

    # No notebook instance was stopped or terminated by the redeploy.
    after = {i["InstanceId"]: i["State"]["Name"] for i in hub.all_notebook_instances()}
    assert {iid: after.get(iid) for iid in notebooks} == notebooks
    # Every user's session from before is still signed in, and the same password works.
    for name, session in sessions.items():
        assert json.loads(session.get("/hub/api/user"))["name"] == name
    for name, password in {**passwords, DEMO_USER: hub.env["users"][DEMO_USER]}.items():
        login(_Browser(hub.url), name, password)
    for name in running:
        status, reply = wait_for(lambda n=name: (answer := status_of(hub, n))[0] == 200 and answer, 120,
                                 f"{name}'s server answering through the new hub")
        assert status == 200, reply
    # The server the standby was asked to stop kept its instance, running: the new hub has it, or
    # (the standby's JupyterHub wrote it stopped, its instance kept) adopts it at the next start.
    assert hub.instance(asked_to_stop)["State"]["Name"] == "running"
    if not ((model := hub.server_model(STANDBY_STOPS)) and model.get("ready")):
        hub.start(STANDBY_STOPS)
    assert [i["InstanceId"] for i in hub.instances(STANDBY_STOPS)] == [asked_to_stop]
    status, reply = wait_for(lambda: (answer := status_of(hub, STANDBY_STOPS))[0] == 200 and answer, 120,
                             f"{STANDBY_STOPS}'s server answering through the new hub")
    # The stopped server resumes, on its kept instance.
    model = hub.start(STOPPED, {"instance_class": KEPT})
    assert model["ready"], model
    assert [i["InstanceId"] for i in hub.instances(STOPPED)] == [kept]

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
