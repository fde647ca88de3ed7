"""The chaos lab: a real JupyterHub, configurable-http-proxy and ``jupyterhub-singleuser`` processes
against the AWS emulator, with faults injected at exact points, and the measurements of issue 9.

Shared by ``tests/chaos/test_chaos.py`` (asserts every row) and ``benchmarks/chaos.py`` (prints
the table). Everything listens on loopback only:

- the **emulator** (``python -m sandbox.emulator``) runs in a subprocess of its own, so its moto
  state and patches never mix with the spawner tests' in-process emulator;
- the **VPC** is ``127.0.0.0/16`` with one ``127.0.<n>.0/24`` subnet per AZ, so every instance's
  private IP is a loopback address of this machine. The notebook stand-in binds
  ``jupyterhub-singleuser`` to ``<private_ip>:<notebook_port>``, and the spawner reaches it with its
  default ``server_url_template`` (``http://{private_ip}:{port}``), exactly as in a VPC: no port map,
  any number of instances on one port;
- the **notebook stand-in** (:class:`LoopbackNotebooks`) follows the emulator's events: at
  ``running`` (every start, not only the first boot) and ``rebooting`` it reads the instance's SSM
  secret at that moment, waiting for it as the notebook user data does, and runs the server with
  that environment; at ``stopped``/``terminated`` it ends the server;
- the **hub** runs from a config written for the run, with the dummy authenticator, the sweeper
  on and its grace shortened (``ORPHAN_GRACE_S``), ``stop_mode = "stop"`` (resume is where state
  is easiest to lose) and the spawn/stop REST calls answering at once (``slow_spawn_timeout=0``).

Points of a spawn or stop are reached with emulator-side holds and waits on the emulator's call
counters, events and the hub's REST model, never with sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import boto3
import botocore.exceptions
import requests as http

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the sandbox package lives at the repository root
sys.path.insert(0, str(REPO / "tests"))  # the shared test helpers (benchmarks/chaos.py too)
import waiting

from sandbox.emulator import EmulatorClient

REGION = "us-east-1"
AZS = ["us-east-1a", "us-east-1b"]
BIN = Path(sys.executable).parent
ADMIN_TOKEN = "chaos-admin-token-" + uuid.uuid4().hex
# Long enough for a SIGKILLed hub to come back and its users to start again (so the next spawn
# finds what the dead hub launched, as with the real 10 minutes; the run checks it did). Only
# instances no server owns are waited for, so a run where nothing is lost does not wait it out.
ORPHAN_GRACE_S = 60.0
SWEEP_INTERVAL_S = 2.0
LIVE = ("pending", "running", "stopping", "stopped")
COLUMNS = ("scenario", "orphans_after_grace", "duplicates", "servers_lost", "login_ok", "secrets_left")
HUB_TAG, USER_TAG, SERVER_TAG = "ec2hub:hub", "ec2hub:user", "ec2hub:server"


class LabError(AssertionError):
    """A step of the lab itself failed (not a measurement)."""


def wait_until(predicate: Callable, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; LabError after ``timeout``."""
    return waiting.wait_until(predicate, timeout, what, interval=interval, error=LabError)


def free_port() -> int:
    return waiting.free_port("0.0.0.0")  # free on every loopback address, not only 127.0.0.1


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


# -- the emulator, in a process of its own -------------------------------------------------------


class EmulatorProcess:
    def __init__(self, log_path: Path, *, pending_s: float):
        self.log_path = log_path
        self.pending_s = pending_s
        self.proc: subprocess.Popen | None = None
        self.endpoint_url = ""

    def start(self) -> EmulatorProcess:
        log = open(self.log_path, "w")  # noqa: SIM115 (the child keeps its own descriptor)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.emulator", "--port", "0", "--pending-s", str(self.pending_s)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"},
        )
        log.close()
        line = self.proc.stdout.readline()
        if not line:
            raise LabError("the emulator did not start:\n" + self.log_path.read_text()[-3000:])
        self.endpoint_url = json.loads(line)["endpoint_url"]
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the notebook instances, on loopback ----------------------------------------------------------


class LoopbackNotebooks:
    """What each notebook instance runs, as processes on this machine (see the module docstring)."""

    def __init__(self, client: EmulatorClient, ec2, ssm, *, port: int, hub_id: str, workdir: Path, env: dict):
        self.client, self.ec2, self.ssm = client, ec2, ssm
        self.port = port
        self.hub_id = hub_id
        self.workdir = workdir
        self.env = env
        self.servers: dict[str, subprocess.Popen] = {}
        self.booted: dict[str, int] = {}  # instance id -> server starts (each read the secret anew)
        self._boot_holds: set[str] = set()  # users whose server does not start until released
        self._held: dict[str, dict] = {}  # instance id -> the event that waits on a boot hold
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="chaos-notebooks", daemon=True)

    def start(self) -> LoopbackNotebooks:
        self._thread.start()
        return self

    def hold_boot(self, user: str) -> None:
        """Instances of ``user`` reach ``running`` but their server does not start (not ready)."""
        with self._lock:
            self._boot_holds.add(user)

    def release_boot(self, user: str) -> None:
        with self._lock:
            self._boot_holds.discard(user)
            waiting = [e for e in self._held.values() if e.get("user") == user]
        for event in waiting:
            self._held.pop(event["instance_id"], None)
            threading.Thread(target=self._apply, args=(event,), daemon=True).start()

    def is_held(self, instance_id: str) -> bool:
        with self._lock:
            return instance_id in self._held

    def _follow(self) -> None:
        after = 0
        while not self._stop.is_set():
            try:
                answer = self.client.events(after, timeout=2)
            except OSError:
                if self._stop.wait(0.2):
                    return
                continue
            after = answer["last"]
            for event in answer["events"]:
                if event["state"] in ("running", "rebooting", "stopped", "terminated"):
                    threading.Thread(target=self._apply, args=(event,), daemon=True).start()

    def _apply(self, event: dict) -> None:
        iid = event["instance_id"]
        with self._lock:
            lock = self._locks.setdefault(iid, threading.Lock())
        with lock:  # one instance's events in order
            self._end(iid)
            if event["state"] in ("running", "rebooting"):
                self._boot(event)

    def _boot(self, event: dict) -> None:
        iid = event["instance_id"]
        instance = None
        deadline = time.monotonic() + 30
        while instance is None and time.monotonic() < deadline:
            try:  # a young instance may not be listed yet (the emulator's visibility lag)
                instance = self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                time.sleep(0.3)
        if instance is None:
            return
        tags = tags_of(instance)
        if tags.get(HUB_TAG) != self.hub_id or USER_TAG not in tags or instance["State"]["Name"] != "running":
            return
        with self._lock:
            if tags[USER_TAG] in self._boot_holds:
                self._held[iid] = {**event, "user": tags[USER_TAG]}
                return
        name = tags["ec2hub:secret-prefix"] + iid
        env = None
        deadline = time.monotonic() + 120
        while env is None and time.monotonic() < deadline and not self._stop.is_set():
            try:  # the notebook waits for its secret (the spawner writes it after RunInstances)
                env = json.loads(self.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
            except self.ssm.exceptions.ParameterNotFound:
                state = self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]
                if state["Name"] != "running":
                    return
                time.sleep(0.3)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):  # an outage: keep trying
                time.sleep(0.3)
        if env is None:
            return
        ip = instance["PrivateIpAddress"]
        env["JUPYTERHUB_SERVICE_URL"] = env["JUPYTERHUB_SERVICE_URL"].replace("0.0.0.0", ip)
        home = self.workdir / iid
        home.mkdir(parents=True, exist_ok=True)
        log = open(home / "singleuser.log", "a")  # noqa: SIM115 (the process owns it)
        args = ["--allow-root"] if os.geteuid() == 0 else []
        self.servers[iid] = subprocess.Popen(
            [str(BIN / "jupyterhub-singleuser"), *args], cwd=home, stdout=log, stderr=subprocess.STDOUT,
            env={**self.env, **env, "HOME": str(home), "JUPYTER_RUNTIME_DIR": str(home / "runtime")},
        )
        log.close()
        self.booted[iid] = self.booted.get(iid, 0) + 1

    def _end(self, iid: str) -> None:
        proc = self.servers.pop(iid, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for iid in list(self.servers):
            self._end(iid)


# -- the hub --------------------------------------------------------------------------------------


class HubProcess:
    """``jupyterhub`` as a subprocess of its own session (the proxy goes with it at teardown)."""

    def __init__(self, workdir: Path, env: dict, api: str):
        self.workdir = workdir
        self.env = env
        self.api = api
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 90) -> None:
        log = open(self.workdir / "hub.log", "a")  # noqa: SIM115 (the child keeps its own descriptor)
        log.write(f"\n==== hub start {self.starts + 1} ====\n")
        log.flush()
        self.proc = subprocess.Popen([str(BIN / "jupyterhub"), "-f", "jupyterhub_config.py"], cwd=self.workdir,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        wait_until(self._up, timeout, "the hub API")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise LabError(f"the hub exited with {self.proc.returncode}:\n" + self.log_tail())
        try:
            return http.get(self.api + "/", timeout=2).ok
        except http.RequestException:
            return False

    def kill(self) -> None:
        """SIGKILL the hub process only, as a crash: its proxy keeps running, as it would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then the whole session (the proxy, after a kill)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def log_tail(self, chars: int = 8000) -> str:
        return (self.workdir / "hub.log").read_text(errors="replace")[-chars:]

    def log_of_this_start(self) -> str:
        return (self.workdir / "hub.log").read_text(errors="replace").rsplit(f"==== hub start {self.starts} ====", 1)[-1]


# -- measurements ---------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    orphans_after_grace: int
    duplicates: int
    servers_lost: int
    login_ok: bool
    secrets_left: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.orphans_after_grace, self.duplicates, self.servers_lost, self.login_ok,
                self.secrets_left) == (0, 0, 0, True, 0)

    def cells(self) -> list[str]:
        return [self.scenario, str(self.orphans_after_grace), str(self.duplicates), str(self.servers_lost),
                "yes" if self.login_ok else "no", str(self.secrets_left)]


def format_table(rows: list[Row]) -> str:
    cells = [list(COLUMNS)] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


@dataclass
class Scenario:
    """One row: ``play`` before the grace period; ``after_grace`` (optional) once it passed, e.g. a
    resume that needs the kept instance to have survived the sweeper. Both return nothing and
    record in ``self`` what the measurement needs."""

    name: str
    play: Callable[[Lab, Scenario], None]
    after_grace: Callable[[Lab, Scenario], None] | None = None
    users: list[str] = field(default_factory=list)  # every user whose instances belong to this row
    expect_servers: list[str] = field(default_factory=list)  # users that must end with a ready server
    keep_instance: dict[str, str] = field(default_factory=dict)  # user -> the instance that must still serve it
    must_live: list[str] = field(default_factory=list)  # instances (not servers) that must not be terminated
    planted: list[str] = field(default_factory=list)  # orphans the lab made itself, for the sweeper to end
    ghosts: list[str] = field(default_factory=list)  # servers the hub kept listing with nothing behind them
    notes: list[str] = field(default_factory=list)
    error: str = ""


class Lab:
    """The whole set-up; a context manager that tears everything down."""

    def __init__(self, workdir: Path, *, pending_s: float = 0.3, config: str = ""):
        self.workdir = workdir
        self.pending_s = pending_s
        self.config = config  # appended to the hub's config (e.g. other tests' spawner settings)
        self.hub_id = "chaos-" + uuid.uuid4().hex[:8]
        self.prefix = f"/ec2hub/{self.hub_id}/servers/"
        self.emulator = EmulatorProcess(workdir / "emulator.log", pending_s=pending_s)
        self.notebooks: LoopbackNotebooks | None = None
        self.hub: HubProcess | None = None

    # -- set-up --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.emulator.start()
        self.control = EmulatorClient(self.emulator.endpoint_url)
        kw = {"region_name": REGION, "endpoint_url": self.emulator.endpoint_url,
              "aws_access_key_id": "chaos", "aws_secret_access_key": "chaos"}
        self.ec2 = boto3.client("ec2", **kw)
        self.ssm = boto3.client("ssm", **kw)
        vpc = self.ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
        self.subnets = {az: self.ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.0.{i + 1}.0/24", AvailabilityZone=az)
                        ["Subnet"]["SubnetId"] for i, az in enumerate(AZS)}
        template = self.ec2.create_launch_template(LaunchTemplateName="small", LaunchTemplateData={
            "ImageId": "ami-12345678", "InstanceType": "t3.medium",
            "MetadataOptions": {"HttpTokens": "required", "InstanceMetadataTags": "enabled"},
        })["LaunchTemplate"]["LaunchTemplateId"]
        self.ports = {name: free_port() for name in ("proxy", "proxy_api", "hub", "notebook")}
        settings = {
            "region": REGION, "hub_id": self.hub_id, "subnets": self.subnets, "secret_prefix": self.prefix,
            "classes": [{"slug": "small", "display_name": "Small", "instance_types": ["t3.medium"],
                         "ami": "ami-12345678", "default": True, "launch_template_id": template}],
            "proxy_port": self.ports["proxy"], "hub_api_port": self.ports["hub"],
            "notebook_port": self.ports["notebook"], "auth": {"type": "dummy", "admin_users": ["admin"]},
        }
        (self.workdir / "settings.json").write_text(json.dumps(settings))
        (self.workdir / "jupyterhub_config.py").write_text(self._hub_config())
        self.env = {**os.environ, "PATH": f"{REPO / 'node_modules/.bin'}:{BIN}:{os.environ['PATH']}",
                    "AWS_ENDPOINT_URL": self.emulator.endpoint_url, "AWS_ACCESS_KEY_ID": "chaos",
                    "AWS_SECRET_ACCESS_KEY": "chaos", "AWS_DEFAULT_REGION": REGION}
        self.env.pop("AWS_PROFILE", None)
        self.proxy = f"http://127.0.0.1:{self.ports['proxy']}"
        self.api_url = self.proxy + "/hub/api"
        self.session = http.Session()
        self.session.headers["Authorization"] = f"token {ADMIN_TOKEN}"
        self.notebooks = LoopbackNotebooks(self.control, self.ec2, self.ssm, port=self.ports["notebook"],
                                           hub_id=self.hub_id, workdir=self.workdir / "instances",
                                           env=self.env).start()
        self.hub = HubProcess(self.workdir, self.env, self.api_url)
        self.hub.start()

    def _hub_config(self) -> str:
        w = self.workdir
        return f"""
import json
from ec2spawner.hubconfig import apply_settings
from ec2spawner.settings import HubSettings

apply_settings(c, HubSettings.model_validate(json.load(open({str(w / 'settings.json')!r}))),
               hub_connect_ip="127.0.0.1", hub_ip="127.0.0.1")
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.db_url = "sqlite:///{w / 'hub.sqlite'}"
c.JupyterHub.cookie_secret_file = {str(w / 'cookie_secret')!r}
c.JupyterHub.pid_file = {str(w / 'hub.pid')!r}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.ports['proxy_api']}"
c.ConfigurableHTTPProxy.command = [{str(REPO / 'node_modules/.bin/configurable-http-proxy')!r}]
c.ConfigurableHTTPProxy.pid_file = {str(w / 'proxy.pid')!r}
# The REST spawn and stop answer at once (202) instead of waiting up to 10 s.
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0, "slow_stop_timeout": 0}}
c.JupyterHub.services = [{{"name": "chaos", "api_token": {ADMIN_TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "chaos", "services": ["chaos"], "scopes": [
    "admin:users", "admin:servers", "admin:server_state", "read:servers", "access:servers", "list:users"]}}]
c.EC2Spawner.stop_mode = "stop"
c.EC2Spawner.fast_poll_interval = 0.2
c.EC2Spawner.poll_interval = 2
c.EC2Spawner.launch_visibility_grace = 5
# start() returns once the server answers (wait_for_server), and after a restart the hub waits for
# a server it finds booting itself (http_timeout): eight servers boot at once after scenario 3's
# restart, about 50 s on this machine when idle.
c.EC2Spawner.start_timeout = 240
c.EC2Spawner.http_timeout = 180
c.EC2Spawner.stop_timeout = 30
c.EC2Spawner.sweep_orphans = True
c.EC2Spawner.orphan_grace = {ORPHAN_GRACE_S}
c.EC2Spawner.sweep_interval = {SWEEP_INTERVAL_S}
""" + self.config

    def close(self) -> None:
        if self.hub is not None:
            self.hub.stop()
        if self.notebooks is not None:
            self.notebooks.close()
        self.emulator.stop()

    # -- the hub's REST API ----------------------------------------------------------------------

    def api(self, method: str, path: str, **kw) -> http.Response:
        return self.session.request(method, self.api_url + path, timeout=30, **kw)

    def create_user(self, name: str) -> None:
        reply = self.api("POST", f"/users/{name}")
        if reply.status_code not in (201, 409):
            raise LabError(f"creating {name}: {reply.status_code} {reply.text}")

    def server(self, name: str) -> dict | None:
        reply = self.api("GET", f"/users/{name}")
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        return reply.json()["servers"].get("")

    def request_start(self, name: str, timeout: float = 60) -> int:
        """POST the spawn; retried while the hub says the server is still pending something."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.api("POST", f"/users/{name}/server", json={"user_options": {}})
            if reply.status_code in (201, 202) or time.monotonic() > deadline:
                return reply.status_code
            if reply.status_code != 400 or "pending" not in reply.text:
                return reply.status_code
            time.sleep(0.2)

    def settle(self, name: str, timeout: float = 200) -> bool:
        """Wait until the server is ready (True) or the hub has no active server for it (False)."""
        def done():
            model = self.server(name)
            if model is None:
                return "gone"
            if model.get("ready"):
                return "ready"
            return None
        try:
            return wait_until(done, timeout, f"{name}'s server to be ready or gone", 0.2) == "ready"
        except LabError:
            return False

    def start(self, name: str) -> bool:
        self.create_user(name)
        status = self.request_start(name)
        return status in (201, 202) and self.settle(name)

    def request_stop(self, name: str) -> int:
        return self.api("DELETE", f"/users/{name}/server").status_code

    def stop(self, name: str, timeout: float = 60) -> None:
        self.request_stop(name)
        wait_until(lambda: self.server(name) is None, timeout, f"{name}'s server to stop", 0.2)

    def settle_cancel(self, name: str, scenario: Scenario, timeout: float = 60) -> None:
        """After the DELETE of a pending spawn: wait until the hub no longer has the spawn pending;
        if it still lists the server, DELETE once more (the user pressing stop again) and wait for
        that to settle too. JupyterHub's DELETE cancels the spawn, waits 1 s and then tries to stop
        it: a spawner still cleaning up then is "pending spawn" (HTTP 500). What the hub lists
        afterwards is measured (a ready server with no instance counts as lost)."""
        def settled():
            model = self.server(name)
            return model is None or not model.get("pending")
        wait_until(settled, timeout, f"{name}'s cancelled spawn to settle", 0.3)
        if self.server(name) is not None:
            self.request_stop(name)
            wait_until(settled, timeout, f"{name}'s second stop to settle", 0.3)
        model = self.server(name)
        if model is not None:  # measured now: a later hub restart would clear it
            scenario.ghosts.append(f"{name}: still listed after the cancel and a second stop "
                                   f"(ready={model.get('ready')}, url={model.get('url')})")

    def server_states(self) -> dict[tuple[str, str], dict]:
        """Every server the hub database knows, running or stopped, with its saved state."""
        reply = self.api("GET", "/users", params={"include_stopped_servers": "1"})
        reply.raise_for_status()
        return {(user["name"], server): model.get("state") or {}
                for user in reply.json() for server, model in user.get("servers", {}).items()}

    def login_ok(self, name: str) -> bool:
        """Log in as ``name`` (dummy authenticator) and open the server's API through the proxy:
        the OAuth handshake between the single-user server and the hub must end in 200."""
        browser = http.Session()
        try:
            browser.get(self.proxy + "/hub/login", timeout=30)
            browser.post(self.proxy + "/hub/login", data={"username": name, "password": "chaos",
                                                          "_xsrf": browser.cookies.get("_xsrf", "")}, timeout=30)
            # A page of the server: unauthenticated, it sends the browser through the hub's OAuth
            # (authorize, then the server's oauth_callback), which sets the server's cookie. The
            # API itself answers 403 rather than redirect.
            browser.get(f"{self.proxy}/user/{name}/", timeout=30)
            reply = browser.get(f"{self.proxy}/user/{name}/api/status", timeout=30)
        except http.RequestException:
            return False
        return reply.status_code == 200 and reply.url.endswith(f"/user/{name}/api/status")

    # -- the emulator and its instances -------------------------------------------------------------

    def instances(self, states=LIVE) -> list[dict]:
        # Filtered here, not with Filters: a hold on the hub's own (filtered) DescribeInstances
        # must not hold the lab's.
        pages = self.ec2.get_paginator("describe_instances").paginate()
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]
                if tags_of(i).get(HUB_TAG) == self.hub_id and i["State"]["Name"] in states]

    def user_instances(self, user: str, states=LIVE) -> list[dict]:
        return [i for i in self.instances(states) if tags_of(i).get(USER_TAG) == user]

    def state_of(self, instance_id: str) -> str:
        return self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]

    def secrets(self) -> list[str]:
        pages = self.ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [self.prefix]}])
        return [p["Name"] for page in pages for p in page["Parameters"]]

    def calls(self, action: str) -> int:
        return self.control.state()["calls"].get(action, 0)

    def hold(self, action: str, contains: str = "") -> int:
        return self.control.hold(action, contains)["id"]

    def wait_held(self, hold_id: int, what: str, timeout: float = 60) -> None:
        def held():
            hold = next(h for h in self.control.state()["holds"] if h["id"] == hold_id)
            return hold["held"] > 0
        wait_until(held, timeout, what)

    def launch_direct(self, user: str | None, *, extra_tags: dict | None = None, stopped: bool = False) -> str:
        """An instance of this hub that the hub did not launch (a crash's orphan, the hub host)."""
        tags = {HUB_TAG: self.hub_id, **({USER_TAG: user, SERVER_TAG: "", "ec2hub:class": "small",
                                          "ec2hub:secret-prefix": self.prefix} if user else {}), **(extra_tags or {})}
        iid = self.ec2.run_instances(
            ImageId="ami-12345678", InstanceType="t3.medium", SubnetId=self.subnets[AZS[0]], MinCount=1, MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["Instances"][0]["InstanceId"]
        if stopped:
            wait_until(lambda: self.state_of(iid) == "running", 30, f"{iid} running")
            self.ec2.stop_instances(InstanceIds=[iid])
            wait_until(lambda: self.state_of(iid) == "stopped", 30, f"{iid} stopped")
        return iid

    def unowned(self, users: set[str] | None = None) -> list[dict]:
        """Live instances (of ``users``, default all) that no server owns in the hub database: not
        named by a saved state (``instance_id``, or ``kept_instance_id`` in stop mode), and not a
        stopped instance of a server that still exists there (kept for its next start)."""
        states = self.server_states()
        named = {s.get(key) for s in states.values() for key in ("instance_id", "kept_instance_id") if s.get(key)}
        found = []
        for instance in self.instances():
            t = tags_of(instance)
            if users is not None and t.get(USER_TAG) not in users:
                continue
            kept = instance["State"]["Name"] in ("stopping", "stopped") and (t.get(USER_TAG), t.get(SERVER_TAG, "")) in states
            if instance["InstanceId"] not in named and not kept:
                found.append(instance)
        return found

    def wait_grace(self) -> bool:
        """Wait until every instance no server owns is past its grace, then for a whole sweep:
        the sweeper ends each sweep with DescribeParameters (no other caller), so two more calls
        mean one sweep ran entirely after that moment. Owned instances are never the sweeper's,
        so when nothing is unowned only the sweep is waited for. False if no sweep came."""
        launched = [i["LaunchTime"] for i in self.unowned()]
        if launched:
            remaining = (max(launched) - datetime.now(UTC)).total_seconds() + ORPHAN_GRACE_S + 1
            if remaining > 0:
                time.sleep(remaining)  # the grace is a duration: this waits out a timer, not a race
        seen = self.calls("DescribeParameters")
        try:
            wait_until(lambda: self.calls("DescribeParameters") >= seen + 2, 6 * SWEEP_INTERVAL_S + 30,
                       "two sweeps after the grace", 0.2)
            return True
        except LabError:
            return False

    # -- the measurement ------------------------------------------------------------------------------

    def measure(self, scenario: Scenario) -> Row:
        users = set(scenario.users)
        states = self.server_states()
        live = [i for i in self.instances() if tags_of(i).get(USER_TAG) in users]
        ever = {i["InstanceId"]: i for i in self.instances(("pending", "running", "stopping", "stopped",
                                                             "shutting-down", "terminated"))}
        orphans = [i["InstanceId"] for i in self.unowned(users)]
        # An instance the sweeper had to end was still unowned when its grace ran out: an orphan
        # after the grace too, even though the safety net caught it (but not the lab's own).
        swept = set(re.findall(r"ec2hub sweeper: terminating orphan (i-[0-9a-f]+)", self.hub.log_tail(10**9)))
        orphans += [iid for iid in sorted(swept) if iid in ever and iid not in scenario.planted
                    and tags_of(ever[iid]).get(USER_TAG) in users]
        per_server: dict[tuple[str, str], int] = {}
        for i in live:
            key = (tags_of(i)[USER_TAG], tags_of(i).get(SERVER_TAG, ""))
            per_server[key] = per_server.get(key, 0) + 1
        duplicates = sum(1 for n in per_server.values() if n > 1)
        lost, notes = 0, list(scenario.notes)
        if scenario.error:
            notes.append("error: " + scenario.error)
        for user in scenario.expect_servers:
            model = self.server(user)
            iid = (states.get((user, "")) or {}).get("instance_id")
            if not (model and model.get("ready")):
                lost += 1
                notes.append(f"{user}: no ready server")
            elif scenario.keep_instance.get(user) and iid != scenario.keep_instance[user]:
                lost += 1
                notes.append(f"{user}: serves {iid}, not its kept {scenario.keep_instance[user]}")
        running = {i["InstanceId"] for i in live if i["State"]["Name"] == "running"}
        for user in users - set(scenario.expect_servers):
            model = self.server(user)
            if model and model.get("ready") and (states.get((user, "")) or {}).get("instance_id") not in running:
                lost += 1  # the hub says ready, but there is nothing to log into
                notes.append(f"{user}: listed ready with no running instance ({model.get('url')})")
        lost += len(scenario.ghosts)
        notes += scenario.ghosts
        for iid in scenario.must_live:
            if self.state_of(iid) not in LIVE:
                lost += 1
                notes.append(f"{iid}: terminated")
        login = all(self.login_ok(user) for user in scenario.expect_servers) if scenario.expect_servers else True
        if not login:
            notes.append("login failed for " + ", ".join(u for u in scenario.expect_servers if not self.login_ok(u)))
        left = 0
        for name in self.secrets():
            instance = ever.get(name[len(self.prefix):])
            if instance is None or tags_of(instance).get(USER_TAG) not in users:
                continue
            if instance["State"]["Name"] not in ("pending", "running"):
                left += 1
        if orphans:
            notes.append("orphans (unowned now, or ended by the sweeper): " + ", ".join(orphans))
        return Row(scenario.name, len(orphans), duplicates, lost, login and not scenario.error, left, notes)


# -- the scenarios of issue 9 -----------------------------------------------------------------------


def _hub_restart_in_outage(lab: Lab, s: Scenario) -> None:
    """1: the hub restarts while EC2 and SSM are unreachable; its first polls fail."""
    user = "outage-1"
    s.users, s.expect_servers = [user], [user]
    if not lab.start(user):
        raise LabError(f"{user} did not start")
    [instance] = lab.user_instances(user)
    s.keep_instance[user] = instance["InstanceId"]
    lab.hub.kill()
    lab.control.outage(600)  # ended below, once the restarted hub has met it
    try:
        refused = lab.control.state()["counters"].get("Refused", 0)
        lab.hub.start()  # its start-up check of the server polls during the outage
        up = lab.control.state()["counters"].get("Refused", 0)
        if up == refused:
            s.notes.append("the hub made no AWS call while starting")
        # And once it serves: its periodic polls meet the outage too.
        wait_until(lambda: lab.control.state()["counters"].get("Refused", 0) > up, 60,
                   "a periodic poll during the outage")
    finally:
        lab.control.outage(0)
    lab.settle(user)


def _database_owns(lab: Lab, s: Scenario) -> None:
    """2: ownership is the hub database: a running and a stopped (kept) server survive a hub restart
    and the sweep; a crash's orphan and a stopped instance of no server are swept; the hub host is
    never touched."""
    running, kept, orphan, gone = "own-running", "own-kept", "own-orphan", "own-gone"
    s.users, s.expect_servers = [running, kept, orphan, gone], [running, kept]
    if not (lab.start(running) and lab.start(kept)):
        raise LabError("the servers did not start")
    [kept_instance] = lab.user_instances(kept)
    s.keep_instance[kept] = kept_instance["InstanceId"]
    lab.stop(kept)
    s.must_live.append(lab.launch_direct(None, extra_tags={"ec2hub:settings-parameter": f"/ec2hub/{lab.hub_id}/settings",
                                                           "Name": "hub"}))
    s.planted += [lab.launch_direct(orphan), lab.launch_direct(gone, stopped=True)]
    lab.hub.stop()
    lab.hub.start()


def _resume_kept(user: str) -> Callable[[Lab, Scenario], None]:
    def after_grace(lab: Lab, s: Scenario) -> None:
        if not lab.start(user):
            s.notes.append(f"{user}: did not resume")
    return after_grace


@dataclass(frozen=True)
class KillPoint:
    user: str
    label: str


KILL_POINTS = [
    KillPoint("kill-before-run", "3 SIGKILL before RunInstances"),
    KillPoint("kill-in-run", "3 SIGKILL in RunInstances"),
    KillPoint("kill-before-secret", "3 SIGKILL before the secret"),
    KillPoint("kill-pending", "3 SIGKILL while pending"),
    KillPoint("kill-booting", "3 SIGKILL running, not ready"),
    KillPoint("kill-stopping", "3 SIGKILL while stopping"),
]


TOKENS = "4 tokens of adopted/resumed"
ADOPT, RESUME = "token-adopt", "token-resume"


def play_kills(lab: Lab, rows: dict[str, Scenario]) -> None:
    """3 and 4: one hub, eight users, each held at one point of a spawn or a stop; one SIGKILL.

    3, before RunInstances: RunInstances held, then dropped unanswered (it never reached EC2);
    in RunInstances: held, then let through after the kill (EC2 made the instance, nobody heard);
    before the secret: RunInstances answered, PutParameter held, then dropped;
    pending: the instance held in `pending`; running, not ready: its server held from starting
    and the hub's state saved (start() returned, the hub waits for the server to answer; it boots
    after the kill); stopping: a ready server's stop, its instance held in `stopping`.
    4, adopted: the instance runs and its server booted with the spawn's token while every
    DescribeInstances of the hub is held (set last, once the other points are reached), so
    start() has not returned and no state is saved; the next spawn adopts it with a new token.
    Resumed: a server stopped (kept) before the kill.
    After the hub restarts, every user starts again at once: one instance each, and they log in.
    """
    before, in_run, before_secret, pending, booting, stopping = (p.user for p in KILL_POINTS)
    for point in KILL_POINTS:
        rows[point.label].users = [point.user]
        rows[point.label].expect_servers = [point.user]
    rows[TOKENS].users = rows[TOKENS].expect_servers = [ADOPT, RESUME]
    users = [p.user for p in KILL_POINTS] + [ADOPT, RESUME]
    for user in users:
        lab.create_user(user)
    for user in (stopping, RESUME):
        lab.request_start(user)
    for user in (stopping, RESUME):
        if not lab.settle(user):
            raise LabError(f"{user} did not start")
    lab.stop(RESUME)
    h_before = lab.hold("RunInstances", before)
    h_in_run = lab.hold("RunInstances", in_run)
    h_secret = lab.hold("PutParameter", before_secret)
    h_pending = lab.hold("pending", f"{USER_TAG}={pending}")
    h_adopt = lab.hold("pending", f"{USER_TAG}={ADOPT}")
    h_stopping = lab.hold("stopping", f"{USER_TAG}={stopping}")
    lab.notebooks.hold_boot(booting)
    for user in (before, in_run, before_secret, pending, booting, ADOPT):
        if lab.request_start(user) not in (201, 202):
            raise LabError(f"{user}: spawn refused")
    lab.request_stop(stopping)
    lab.wait_held(h_before, "RunInstances of " + before)
    lab.wait_held(h_in_run, "RunInstances of " + in_run)
    lab.wait_held(h_secret, "PutParameter of " + before_secret)
    lab.wait_held(h_pending, pending + "'s instance held pending")
    lab.wait_held(h_adopt, ADOPT + "'s instance held pending")
    lab.wait_held(h_stopping, stopping + "'s instance held stopping")
    booted = wait_until(lambda: [i for i in lab.user_instances(booting, ("running",))
                                 if lab.notebooks.is_held(i["InstanceId"])], 60, f"{booting}'s instance running")
    wait_until(lambda: lab.prefix + booted[0]["InstanceId"] in lab.secrets(), 60, f"{booting}'s secret")
    # start() has returned and the hub saved the state (it is waiting for the server to answer).
    wait_until(lambda: lab.server_states().get((booting, ""), {}).get("instance_id"), 60,
               f"the hub to save {booting}'s state")
    [adopted] = lab.user_instances(ADOPT)
    wait_until(lambda: lab.prefix + adopted["InstanceId"] in lab.secrets(), 60, f"{ADOPT}'s secret")
    # From here every DescribeInstances of the hub waits (the lab and the notebooks use none with
    # Filters): whatever the hub saw before said `pending` for ADOPT's instance.
    h_describe = lab.hold("DescribeInstances", "Filter")
    lab.wait_held(h_describe, "the hub's next DescribeInstances")
    lab.control.release(h_adopt)
    wait_until(lambda: lab.notebooks.booted.get(adopted["InstanceId"]), 60, f"{ADOPT}'s server to boot")
    lab.hub.kill()
    lab.control.release(h_before, drop=True)
    lab.control.release(h_secret, drop=True)
    lab.control.release(h_describe, drop=True)
    lab.control.release(h_in_run)
    lab.control.release(h_pending)
    lab.control.release(h_stopping)
    lab.notebooks.release_boot(booting)
    # What the dead hub left for the next spawn to find (in RunInstances: EC2 makes it now).
    left = {user: lab.user_instances(user)[0]["InstanceId"] for user in (before_secret, pending, booting, ADOPT)}
    left[in_run] = wait_until(lambda: lab.user_instances(in_run), 60, f"{in_run}'s instance")[0]["InstanceId"]
    lab.hub.start()

    def row_of(user: str) -> Scenario:
        return rows[TOKENS] if user in (ADOPT, RESUME) else next(rows[p.label] for p in KILL_POINTS if p.user == user)

    for user in users:
        if lab.request_start(user) not in (201, 202):
            row_of(user).notes.append("spawn after the restart refused")
    for user in users:
        lab.settle(user)
    log = lab.hub.log_of_this_start()
    for user, iid in left.items():
        if f"terminating orphan {iid}" in log:  # swept before the user came back: nothing to adopt
            row_of(user).error = f"point not reached: the sweeper ended {iid} before {user} started again"


def _resume_failures(lab: Lab, s: Scenario) -> None:
    """5: a resume that meets no capacity keeps the stopped instance; a lagging `stopped` answer
    after StartInstances is not a failure."""
    user = "resume-fail"
    s.users, s.expect_servers = [user], [user]
    if not lab.start(user):
        raise LabError(f"{user} did not start")
    [instance] = lab.user_instances(user)
    s.keep_instance[user] = instance["InstanceId"]
    lab.stop(user)
    az = instance["Placement"]["AvailabilityZone"]
    lab.control.faults(capacity=[{"az": az, "instance_type": instance["InstanceType"]}])
    try:
        starts = lab.control.state()["counters"].get("InsufficientInstanceCapacity", 0)
        lab.request_start(user)
        wait_until(lambda: lab.control.state()["counters"].get("InsufficientInstanceCapacity", 0) > starts, 60,
                   "the resume to meet no capacity")
        if lab.settle(user):
            s.notes.append("ready without capacity?")
    finally:
        lab.control.faults(clear_capacity=True)
    lab.control.faults(start_lag_s=1.0)
    try:
        lab.request_start(user)
        lab.settle(user)
    finally:
        lab.control.faults(start_lag_s=0)


def _not_found_after_launch(lab: Lab, s: Scenario) -> None:
    """6: a start that fails right after RunInstances, while EC2 does not list the new instance yet
    (TerminateInstances answers InvalidInstanceID.NotFound): the instance must not be left running.
    The failure: the spawn is cancelled while its PutParameter is held."""
    user = "young-not-found"
    s.users = [user]
    lab.create_user(user)
    h_secret = lab.hold("PutParameter", user)
    lab.control.faults(visibility_lag_s=6.0)
    try:
        lab.request_start(user)
        lab.wait_held(h_secret, "PutParameter of " + user)
        lab.request_stop(user)  # answers once the hub has cancelled the spawn
        lab.control.release(h_secret)
        lab.settle_cancel(user, s)
    finally:
        lab.control.faults(visibility_lag_s=0)


def _cancel_in_flight(lab: Lab, s: Scenario) -> None:
    """7: a spawn cancelled (DELETE) and a hub shut down while RunInstances is in flight leave nothing."""
    cancel, shutdown = "cancel-in-run", "shutdown-in-run"
    s.users = [cancel, shutdown]
    for user in (cancel, shutdown):
        lab.create_user(user)
    h_cancel = lab.hold("RunInstances", cancel)
    lab.request_start(cancel)
    lab.wait_held(h_cancel, "RunInstances of " + cancel)
    # The DELETE answers once the hub has cancelled the spawn (JupyterHub cancels the spawn's
    # future, then tries to stop it); only then does EC2 answer the RunInstances.
    lab.request_stop(cancel)
    lab.control.release(h_cancel)
    lab.settle_cancel(cancel, s)
    h_shutdown = lab.hold("RunInstances", shutdown)
    lab.request_start(shutdown)
    lab.wait_held(h_shutdown, "RunInstances of " + shutdown)
    stopper = threading.Thread(target=lab.hub.stop)
    stopper.start()  # release the held call once the shutdown is under way
    wait_until(lambda: lab.hub.proc.poll() is not None or "initiating shutdown" in lab.hub.log_of_this_start(), 60,
               "the hub to begin its shutdown")
    lab.control.release(h_shutdown)
    stopper.join(60)
    lab.hub.start()


def scenarios() -> list[Scenario]:
    return [
        Scenario("1 hub restart in an EC2 outage", _hub_restart_in_outage),
        Scenario("2 ownership is the hub database", _database_owns, after_grace=_resume_kept("own-kept")),
        *[Scenario(p.label, lambda lab, s: None) for p in KILL_POINTS],
        Scenario(TOKENS, lambda lab, s: None),  # played with 3: the same SIGKILL
        Scenario("5 resume failures keep the disk", _resume_failures),
        Scenario("6 NotFound right after launch", _not_found_after_launch),
        Scenario("7 cancel/shutdown in RunInstances", _cancel_in_flight),
    ]


def run(workdir: Path, log: Callable[[str], None] = lambda m: None,
        inspect: Callable[[Lab], None] | None = None) -> tuple[list[Row], float]:
    """Play every scenario against one lab, wait out the grace, measure; rows and seconds taken.
    ``inspect(lab)`` runs last, before the lab is torn down (e.g. `sandbox status` against it)."""
    started = time.monotonic()
    plan = scenarios()
    by_name = {s.name: s for s in plan}
    with Lab(workdir) as lab:
        for s in plan:
            if s.name.startswith("3 ") or s.name == TOKENS:
                if s.name == KILL_POINTS[0].label:
                    _guard(lab, [by_name[p.label] for p in KILL_POINTS] + [by_name[TOKENS]],
                           lambda: play_kills(lab, by_name), log)
                    log(f"played 3 and 4 ({time.monotonic() - started:.0f} s)")
                continue
            _guard(lab, [s], lambda s=s: s.play(lab, s), log)
            log(f"played {s.name} ({time.monotonic() - started:.0f} s)")
        swept = lab.wait_grace()
        log(f"grace passed, sweeper {'ran' if swept else 'did NOT run'} ({time.monotonic() - started:.0f} s)")
        for s in plan:
            if s.after_grace is not None:
                _guard(lab, [s], lambda s=s: s.after_grace(lab, s), log)
        rows = [lab.measure(s) for s in plan]
        if not swept:
            for row in rows:
                row.notes.append("no sweep after the grace")
        if not all(r.ok for r in rows):
            rows[0].notes.append("hub log tail:\n" + lab.hub.log_tail(6000))
            log_lines = lab.hub.log_tail(10**9).splitlines()
            for s, row in zip(plan, rows, strict=True):
                if not row.ok:  # what the hub said of this row's users, for the failure's reader
                    said = [line for line in log_lines if any(user in line for user in s.users)]
                    row.notes.append("the hub's log of " + ", ".join(s.users) + ":\n" + "\n".join(said[-80:]))
        if inspect is not None:
            inspect(lab)
    return rows, time.monotonic() - started


def _guard(lab: Lab, rows: list[Scenario], play: Callable[[], None], log: Callable[[str], None]) -> None:
    """Run a scenario; a step that fails marks its rows and leaves the hub running for the next."""
    try:
        play()
    except Exception as error:  # noqa: BLE001 (recorded in its rows: the table must still be printed)
        for s in rows:
            s.error = f"{type(error).__name__}: {error}"
        log(f"{rows[0].name}: {error}")
        if lab.hub.proc is None or lab.hub.proc.poll() is not None:
            with contextlib.suppress(Exception):
                lab.hub.start()
