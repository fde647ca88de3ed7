"""A real JupyterHub (subprocess, 127.0.0.1 only) drives spawn and stop through EC2Spawner.

Nothing boots on an emulated instance, so the test plays the notebook instance: once the spawner
has written the server's secret it runs a real ``jupyterhub-singleuser`` on 127.0.0.1 with that env,
and the spawner reaches it through ``server_url_template``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests as http
from spawner_testing import REGION, REPO
from waiting import free_port, wait_until

pytestmark = pytest.mark.slow

API_TOKEN = "hub-test-admin-token-0123456789abcdef"


@pytest.fixture
def hub(request, emulator, platform, tmp_path, hub_id):
    ports = {name: free_port() for name in ("proxy", "proxy_api", "hub", "notebook")}
    settings = {
        "region": REGION, "hub_id": hub_id, "subnets": platform.subnets,
        "classes": [{k: v for k, v in c.items()} for c in platform.classes],
        "secret_prefix": f"/ec2hub/{hub_id}/servers/", "proxy_port": ports["proxy"],
        "hub_api_port": ports["hub"], "auth": {"type": "dummy", "admin_users": ["admin"]},
    }
    param = getattr(request, "param", {})
    if "settings" in param:
        param["settings"](settings)  # e.g. per-class policies, limits, jupyterhub_config.d files
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    (tmp_path / "jupyterhub_config.py").write_text(f"""
import json
from ec2spawner.hubconfig import apply_settings, load_extra_config
from ec2spawner.settings import HubSettings

settings = HubSettings.model_validate(json.load(open({str(tmp_path / 'settings.json')!r})))
apply_settings(c, settings, hub_connect_ip="127.0.0.1", hub_ip="127.0.0.1")
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.db_url = "sqlite:///{tmp_path / 'hub.sqlite'}"
c.JupyterHub.cookie_secret_file = {str(tmp_path / 'cookie_secret')!r}
c.JupyterHub.pid_file = {str(tmp_path / 'hub.pid')!r}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports['proxy_api']}"
c.ConfigurableHTTPProxy.command = [{str(REPO / 'node_modules/.bin/configurable-http-proxy')!r}]
# No idle culler here; an API token for the test instead.
c.JupyterHub.services = [{{"name": "test", "api_token": {API_TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "test", "scopes": ["admin:users", "admin:servers", "read:servers", "access:servers"],
                             "services": ["test"]}}]
c.EC2Spawner.notebook_port = {ports['notebook']}
c.EC2Spawner.server_url_template = "http://127.0.0.1:{{port}}"
c.EC2Spawner.fast_poll_interval = 0.2
c.EC2Spawner.poll_interval = 2
# start() returns once the server answers (wait_for_server): jupyterhub-singleuser took 22 s to
# answer, and more than 30 s, on a 2-core machine at load 12.
c.EC2Spawner.start_timeout = 150
c.EC2Spawner.sweep_orphans = False
""" + param.get("config", "") + """
# Last, as in bootstrap/hub/jupyterhub_config.py: the deployment's jupyterhub_config.d files.
load_extra_config(c, settings)
""")
    before = param.get("before")
    prepared = before(hub_id) if before else None  # e.g. instances a crashed hub left behind
    env = {**os.environ, "PATH": f"{REPO / 'node_modules/.bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "AWS_ENDPOINT_URL": emulator.endpoint_url}
    log = open(tmp_path / "hub.log", "a")  # noqa: SIM115 (closed at teardown)
    api = f"http://127.0.0.1:{ports['proxy']}/hub/api"
    session = http.Session()
    session.headers["Authorization"] = f"token {API_TOKEN}"
    procs = []

    def up():
        try:
            return session.get(api + "/", timeout=2).ok
        except http.ConnectionError:
            return procs[-1].poll() is not None and pytest.fail("hub exited:\n" + (tmp_path / "hub.log").read_text())

    def start():
        if param.get("expect_exit"):  # a hub that must refuse to start: the test waits for it
            procs.append(subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", "jupyterhub_config.py"],
                                          cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
            return
        procs.append(subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", "jupyterhub_config.py"],
                                      cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
        wait_until(up, 60, "the hub API")

    def stop():
        proc = procs[-1]
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart():
        stop()
        start()

    try:
        start()
        yield type("Hub", (), {"api": api, "session": session, "ports": ports, "hub_id": hub_id,
                               "env": env, "tmp": tmp_path, "restart": staticmethod(restart), "prepared": prepared, "proc": staticmethod(lambda: procs[-1]),
                               "log": staticmethod(lambda: (tmp_path / "hub.log").read_text())})
    finally:
        if procs:
            stop()
        log.close()
        if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed:
            print("---- hub log ----\n" + (tmp_path / "hub.log").read_text())


def play_instance(hub, ssm, env_path: Path) -> subprocess.Popen:
    """What bootstrap/notebook does on the instance: read its secret, run jupyterhub-singleuser."""
    prefix = f"/ec2hub/{hub.hub_id}/servers/"

    def secret():
        found = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [prefix]}])
        return found["Parameters"]

    [param] = wait_until(secret, 30, "the server's secret")
    env = json.loads(ssm.get_parameter(Name=param["Name"], WithDecryption=True)["Parameter"]["Value"])
    # On EC2 the server binds 0.0.0.0 of its own instance; here it stays on loopback.
    env["JUPYTERHUB_SERVICE_URL"] = env["JUPYTERHUB_SERVICE_URL"].replace("0.0.0.0", "127.0.0.1")
    log = open(env_path, "w")  # noqa: SIM115 (the process owns it)
    args = ["--allow-root"] if os.geteuid() == 0 else []
    return subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub-singleuser"), *args],
                            env={**hub.env, **env, "HOME": str(hub.tmp)}, cwd=hub.tmp, stdout=log,
                            stderr=subprocess.STDOUT)


def test_hub_spawns_and_stops_through_rest_api(hub, ssm, live):
    s, api = hub.session, hub.api
    assert s.post(f"{api}/users/alice").status_code == 201

    # Refused before anything launches, with the reason, over REST.
    bad = s.post(f"{api}/users/alice/server", json={"user_options": {"instance_class": "huge"}})
    assert bad.status_code == 400
    assert "Unknown instance class 'huge': use one of: small, spot" in bad.json()["message"]
    assert live() == []

    # The POST returns once the server answers or after slow_spawn_timeout, so the "instance"
    # must come up meanwhile.
    with ThreadPoolExecutor(1) as pool:
        instance = pool.submit(play_instance, hub, ssm, hub.tmp / "singleuser.log")
        started = s.post(f"{api}/users/alice/server", json={"user_options": {"instance_class": "small"}})
        notebook = instance.result()
    assert started.status_code in (201, 202)
    try:
        def ready():
            model = s.get(f"{api}/users/alice").json()
            server = model["servers"].get("")
            return server and server["ready"] and server

        server = wait_until(ready, 120, "the server to be ready")
        # The class is recorded under both names (the admin page's Profile column reads "profile").
        assert server["user_options"] == {"instance_class": "small", "profile": "small"}
        [instance] = live("alice")
        assert instance["State"]["Name"] == "running"

        # Through the proxy to the real singleuser server.
        status = s.get(f"http://127.0.0.1:{hub.ports['proxy']}/user/alice/api/status")
        assert status.status_code == 200

        # cleanup_servers is False: a restarted hub re-attaches through load_state + poll().
        hub.restart()
        server = wait_until(ready, 30, "the server to be ready after the hub restart")
        assert server["url"] == "/user/alice/"
        assert [i["InstanceId"] for i in live("alice")] == [instance["InstanceId"]]
        status = s.get(f"http://127.0.0.1:{hub.ports['proxy']}/user/alice/api/status")
        assert status.status_code == 200

        assert s.delete(f"{api}/users/alice/server").status_code in (202, 204)
        wait_until(lambda: not s.get(f"{api}/users/alice").json()["servers"], 30, "the server to stop")
        assert live() == []
        prefix = f"/ec2hub/{hub.hub_id}/servers/"
        assert ssm.describe_parameters(ParameterFilters=[
            {"Key": "Name", "Option": "BeginsWith", "Values": [prefix]}])["Parameters"] == []
    finally:
        notebook.terminate()
        notebook.wait(10)


def _saved_instance(hub, user: str) -> str | None:
    """The instance the hub database's saved state of ``user``'s default server names."""
    with sqlite3.connect(hub.tmp / "hub.sqlite") as db:
        rows = db.execute("SELECT spawners.state FROM spawners JOIN users ON users.id = spawners.user_id"
                          " WHERE users.name = ? AND spawners.name = ''", (user,)).fetchall()
    return next((json.loads(state).get("instance_id") for (state,) in rows if state), None)


def test_a_server_stopped_or_a_hub_restarted_while_the_server_boots(hub, ssm, live):
    """start() waits for the server's answer (wait_for_server) with its state already saved: a DELETE
    then ends the instance and its secret; a hub restart keeps it, and the server comes up."""
    s, api = hub.session, hub.api
    prefix = f"/ec2hub/{hub.hub_id}/servers/"

    def secrets():
        return ssm.describe_parameters(ParameterFilters=[
            {"Key": "Name", "Option": "BeginsWith", "Values": [prefix]}])["Parameters"]

    with ThreadPoolExecutor(2) as pool:
        for user in ("bob", "alice"):
            assert s.post(f"{api}/users/{user}").status_code == 201
            pool.submit(s.post, f"{api}/users/{user}/server", json={}, timeout=60)  # answers after 10 s
        # Nothing plays the instances yet: they run, their servers do not answer.
        booting = {user: wait_until(lambda u=user: _saved_instance(hub, u), 60, f"{user}'s state saved while booting")
                   for user in ("bob", "alice")}
        for user in ("bob", "alice"):
            assert [(i["InstanceId"], i["State"]["Name"]) for i in live(user)] == [(booting[user], "running")]
            assert not _server(s, api, user)["ready"]

        assert s.delete(f"{api}/users/bob/server").status_code in (202, 204)
        wait_until(lambda: _server(s, api, "bob") is None and live("bob") == [], 60, "bob's stop")
        assert [p["Name"] for p in secrets()] == [prefix + booting["alice"]]

        hub.restart()  # SIGTERM: JupyterHub cancels alice's pending spawn on its way down
    notebook = play_instance(hub, ssm, hub.tmp / "singleuser.log")  # her server comes up only now
    try:
        wait_until(lambda: (_server(s, api, "alice") or {}).get("ready"), 120, "alice's server after the restart")
        assert [i["InstanceId"] for i in live("alice")] == [booting["alice"]]
        assert [p["Name"] for p in secrets()] == [prefix + booting["alice"]]
    finally:
        notebook.terminate()
        notebook.wait(10)


SWEEPING = """
c.EC2Spawner.sweep_orphans = True
c.EC2Spawner.orphan_grace = 1
c.EC2Spawner.sweep_interval = 0.5
c.EC2Spawner.stop_mode = "stop"
"""


def _launch(tags) -> str:
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION)
    return ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.medium",
                             TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"][0]["InstanceId"]


def _left_by_a_crash(hub_id: str) -> dict:
    """An orphan of a crashed hub, and the hub host: tagged ec2hub:hub too (infra/hub.py), no ec2hub:user."""
    from ec2spawner.payloads import instance_tags

    return {
        "orphan": _launch(instance_tags(hub_id=hub_id, user="ghost", server="", class_slug="small",
                                        secret_prefix="/x/", efs_id=None)),
        "hub_host": _launch([{"Key": "ec2hub:hub", "Value": hub_id},
                             {"Key": "ec2hub:settings-parameter", "Value": f"/ec2hub/{hub_id}/settings"}]),
    }


@pytest.mark.parametrize("hub", [{"config": SWEEPING, "before": _left_by_a_crash}], indirect=True)
def test_sweeper_starts_with_the_hub_and_owns_what_the_database_names(hub, ec2, ssm, live):
    def state(iid):
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]

    orphan, hub_host = hub.prepared["orphan"], hub.prepared["hub_host"]
    # Nobody spawns: the sweeper started with the hub.
    wait_until(lambda: state(orphan) in ("shutting-down", "terminated"), 30, "the orphan to be swept")
    assert f"terminating orphan {orphan}" in hub.log()

    # stop_mode=stop: the stopped instance is owned through the saved state, with no Spawner loaded.
    s, api = hub.session, hub.api
    assert s.post(f"{api}/users/alice").status_code == 201
    with ThreadPoolExecutor(1) as pool:
        instance = pool.submit(play_instance, hub, ssm, hub.tmp / "singleuser.log")
        assert s.post(f"{api}/users/alice/server", json={}).status_code in (201, 202)
        notebook = instance.result()
    try:
        wait_until(lambda: (s.get(f"{api}/users/alice").json()["servers"].get("") or {}).get("ready"), 120,
                   "the server to be ready")
        [kept] = [i["InstanceId"] for i in live("alice")]
        assert s.delete(f"{api}/users/alice/server").status_code in (202, 204)
        wait_until(lambda: not s.get(f"{api}/users/alice").json()["servers"], 30, "the server to stop")
    finally:
        notebook.terminate()
        notebook.wait(10)
    sweeps = hub.log().count("ec2hub sweeper: swept")
    wait_until(lambda: hub.log().count("ec2hub sweeper: swept") >= sweeps + 3, 30, "three more sweeps")
    assert state(kept) == "stopped"
    assert state(hub_host) == "running" and hub_host not in hub.log()


def test_hub_shutdown_while_run_instances_is_in_flight_leaves_nothing(hub, emulator, monkeypatch, live, ssm):
    import signal
    import threading

    in_flight, release = threading.Event(), threading.Event()
    before = emulator.before_run_instances

    def slow(backend, kwargs):  # the emulator runs in this process: hold EC2's answer back
        in_flight.set()
        release.wait(20)
        return before(backend, kwargs)

    monkeypatch.setattr(emulator, "before_run_instances", slow)
    s, api = hub.session, hub.api
    assert s.post(f"{api}/users/alice").status_code == 201
    with ThreadPoolExecutor(1) as pool:
        pool.submit(s.post, f"{api}/users/alice/server", json={}, timeout=30)
        assert in_flight.wait(30)
        hub.proc().send_signal(signal.SIGTERM)  # systemd stopping the hub mid-spawn
        wait_until(lambda: "initiating shutdown" in hub.log(), 15, "the hub to begin its shutdown")
        release.set()  # EC2 launches the instance after the hub gave up the spawn
        hub.proc().wait(30)
    assert live() == []
    prefix = f"/ec2hub/{hub.hub_id}/servers/"
    assert ssm.describe_parameters(ParameterFilters=[
        {"Key": "Name", "Option": "BeginsWith", "Values": [prefix]}])["Parameters"] == []
    assert "cleaned up" in hub.log()


# Two jupyterhub_config.d files: the second runs after the first and after the platform's config.
CONFIG_D = {
    "10-first.py": "c.Spawner.environment = {'EC2HUB_CONFIG_D': 'first', 'EC2HUB_ONLY_FIRST': 'yes'}\n",
    "20-second.py": "c.Spawner.environment = {**c.Spawner.environment, 'EC2HUB_CONFIG_D': 'second'}\n",
}
GPU_LIMIT = ("Class 'GPU (NVIDIA A10G)' allows 1 running server(s) per user, and you have 1 "
             "(your default server): stop one first, or pick another class.")


def _policies(settings):
    small, gpu, _spot = settings["classes"]
    gpu.pop("allowed_groups")
    gpu.update(environment={"EC2HUB_CLASS_GREETING": "hello from gpu"}, stop_mode="stop", max_per_user=1)
    small.update(start_timeout=10)  # the hub's own start_timeout is 150 s
    settings.update(named_server_limit_per_user=1, extra_config=CONFIG_D)


def _server(s, api, user, name=""):
    return s.get(f"{api}/users/{user}").json()["servers"].get(name)


@pytest.mark.parametrize("hub", [{"settings": _policies}], indirect=True)
def test_class_policies_profile_alias_and_limits_through_the_hub(hub, emu, ec2, ssm, live):
    s, api = hub.session, hub.api
    assert s.post(f"{api}/users/alice").status_code == 201
    # A z2jh script's {"profile": ...} picks the class.
    with ThreadPoolExecutor(1) as pool:
        instance = pool.submit(play_instance, hub, ssm, hub.tmp / "singleuser.log")
        started = s.post(f"{api}/users/alice/server", json={"user_options": {"profile": "gpu"}})
        notebook = instance.result()
    assert started.status_code in (201, 202)
    try:
        server = wait_until(lambda: (_server(s, api, "alice") or {}).get("ready") and _server(s, api, "alice"),
                            120, "the gpu server to be ready")
        # The admin page's Profile column reads user_options.profile.
        assert server["user_options"] == {"profile": "gpu", "instance_class": "gpu"}
        [launched] = live("alice")
        assert launched["InstanceType"] == "g5.xlarge"
        assert {t["Key"]: t["Value"] for t in launched["Tags"]}["ec2hub:class"] == "gpu"
        # The class's environment and the jupyterhub_config.d files (in name order) reach the secret.
        name = f"/ec2hub/{hub.hub_id}/servers/{launched['InstanceId']}"
        env = json.loads(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
        assert env["EC2HUB_CLASS_GREETING"] == "hello from gpu"
        assert (env["EC2HUB_CONFIG_D"], env["EC2HUB_ONLY_FIRST"]) == ("second", "yes")

        # max_per_user: a second gpu server is refused before anything launches.
        refused = s.post(f"{api}/users/alice/servers/second", json={"user_options": {"profile": "gpu"}})
        assert (refused.status_code, refused.json()["message"]) == (403, GPU_LIMIT)
        assert len(live("alice")) == 1
        # named_server_limit_per_user = 1: 'second' exists (stopped), so a third name is refused.
        third = s.post(f"{api}/users/alice/servers/third", json={"user_options": {"profile": "small"}})
        assert third.status_code == 400
        assert "already has the maximum of 1 named servers" in third.json()["message"]
        assert len(live("alice")) == 1

        # The gpu class stops (and keeps) its instance although the hub's stop_mode is terminate.
        assert s.delete(f"{api}/users/alice/server").status_code in (202, 204)
        wait_until(lambda: _server(s, api, "alice") is None, 30, "the server to stop")
        [kept] = live("alice")
        assert (kept["InstanceId"], kept["State"]["Name"]) == (launched["InstanceId"], "stopped")
    finally:
        notebook.terminate()
        notebook.wait(10)

    # The small class's start_timeout (10 s) ends a spawn stuck in pending, not the hub's 150 s.
    emu.set_timing(pending_s=120)
    assert s.post(f"{api}/users/bob").status_code == 201
    began = time.monotonic()
    assert s.post(f"{api}/users/bob/server", json={"user_options": {"instance_class": "small"}}).status_code in (201, 202)
    wait_until(lambda: _server(s, api, "bob") is None, 40, "the stuck spawn to fail")
    assert 10 <= time.monotonic() - began < 25
    wait_until(lambda: live("bob") == [], 20, "the stuck instance to be cleaned up")


BROKEN_CONFIG_D = {"10-fine.py": "c.Spawner.default_url = '/lab'\n", "20-broken.py": "c.Spawner.environment = {\n"}


@pytest.mark.parametrize(
    "hub", [{"settings": lambda s: s.update(extra_config=BROKEN_CONFIG_D), "expect_exit": True}], indirect=True
)
def test_config_d_file_with_a_syntax_error_stops_the_hub_naming_it(hub):
    assert hub.proc().wait(60) != 0
    assert "ec2hub: jupyterhub_config.d/20-broken.py: line 1: '{' was never closed" in hub.log()


PROMETHEUS_TOKEN = "hub-test-prometheus-token-0123456789ab"
METRICS = f"""
c.JupyterHub.services.append({{"name": "prometheus", "api_token": {PROMETHEUS_TOKEN!r}}})
c.JupyterHub.load_roles.append({{"name": "prometheus", "scopes": ["read:metrics"], "services": ["prometheus"]}})
c.EC2Spawner.lease_table = "lease-" + c.EC2Spawner.hub_id
c.EC2Spawner.sweep_orphans = True
c.EC2Spawner.orphan_grace = 1
c.EC2Spawner.sweep_interval = 0.5
"""


def _orphan_and_lease_table(hub_id: str) -> dict:
    import boto3

    boto3.client("dynamodb", region_name=REGION).create_table(
        TableName=f"lease-{hub_id}", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "hub_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "hub_id", "AttributeType": "S"}])
    return _left_by_a_crash(hub_id)


def scrape(hub, token=PROMETHEUS_TOKEN) -> dict[tuple[str, frozenset], float]:
    """``/hub/metrics`` as Prometheus reads it, with a service token of scope read:metrics:
    (sample name, labels) -> value, for the ec2hub_ samples."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = http.get(f"http://127.0.0.1:{hub.ports['proxy']}/hub/metrics",
                      headers={"Authorization": f"token {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(answer.text) if family.name.startswith("ec2hub_")
            for s in family.samples}


def sample(samples, name, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.mark.parametrize("hub", [{"config": METRICS, "before": _orphan_and_lease_table}], indirect=True)
def test_metrics_after_a_spawn_at_hub_metrics(hub, emu, ssm, live):
    from spawner_testing import AZS

    proxy = f"http://127.0.0.1:{hub.ports['proxy']}"
    # authenticate_prometheus is on (JupyterHub's default): no token, or one without read:metrics, is refused.
    assert http.get(f"{proxy}/hub/metrics", timeout=10).status_code == 403
    assert http.get(f"{proxy}/hub/metrics", headers={"Authorization": f"token {API_TOKEN}"},
                    timeout=10).status_code == 403
    orphan = hub.prepared["orphan"]
    wait_until(lambda: (sample(scrape(hub), "ec2hub_sweep_actions_total", action="terminated") or 0) >= 1, 30,
               "the crashed hub's orphan to be swept")
    assert f"ec2hub sweeper: terminating orphan {orphan}" in hub.log()  # the line the stack's alarm counts
    assert sample(scrape(hub), "ec2hub_lease_held") == 1.0

    emu.add_capacity_fault(AZS[0], "t3.medium")  # the first AZ tried: one fallback to the next
    s, api = hub.session, hub.api
    assert s.post(f"{api}/users/alice").status_code == 201
    with ThreadPoolExecutor(1) as pool:
        instance = pool.submit(play_instance, hub, ssm, hub.tmp / "singleuser.log")
        assert s.post(f"{api}/users/alice/server", json={"user_options": {"instance_class": "small"}}
                      ).status_code in (201, 202)
        notebook = instance.result()
    try:
        wait_until(lambda: (s.get(f"{api}/users/alice").json()["servers"].get("") or {}).get("ready"), 60,
                   "the server to be ready")
        # The instance gauges follow the watcher's next describe cycle.
        samples = wait_until(lambda: (m := scrape(hub)) and sample(
            m, "ec2hub_instances", instance_class="small", state="running") == 1 and m, 30, "running=1")
        assert sample(samples, "ec2hub_spawn_duration_seconds_count", instance_class="small", phase="launch") == 1
        assert sample(samples, "ec2hub_spawn_duration_seconds_count", instance_class="small", phase="boot") == 1
        assert sample(samples, "ec2hub_spawn_duration_seconds_count", instance_class="small", phase="server") == 1
        assert sample(samples, "ec2hub_capacity_fallbacks_total", instance_class="small",
                      reason="InsufficientInstanceCapacity") == 1
        assert sample(samples, "ec2hub_spend_rate_usd_per_hour", instance_class="small") == pytest.approx(0.0416)
        assert sample(samples, "ec2hub_sweeps_total") >= 1
        assert sample(samples, "ec2hub_lease_held") == 1.0
        # Bounded labels only: no user name or instance id in any of them.
        [iid] = [i["InstanceId"] for i in live("alice")]
        values = {v for _, labels in samples for _, v in labels}
        assert not {v for v in values if "alice" in v or "ghost" in v or v.startswith("i-")}, values

        assert s.delete(f"{api}/users/alice/server").status_code in (202, 204)
        wait_until(lambda: not s.get(f"{api}/users/alice").json()["servers"], 30, "the server to stop")
        samples = wait_until(lambda: (m := scrape(hub)) and sample(
            m, "ec2hub_instances", instance_class="small", state="running") == 0 and m, 30, "running=0")
        assert sample(samples, "ec2hub_spend_rate_usd_per_hour", instance_class="small") == 0
        assert iid not in str(samples)
    finally:
        notebook.terminate()
        notebook.wait(10)
