"""Fixtures for running the bootstrap scripts for real in isolated hosts.

Everything lives on loopback or inside namespaces named ``ec2hub-bt*`` (the VPC and its hosts), so
these tests never clean up, or trip over, another sandbox on the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest
import waiting
from ec2spawner.payloads import access_point_params, unix_name
from waiting import free_port

from infra.userdata import assemble_user_data
from sandbox.host import (
    CGROUP_HIERARCHIES,
    NSPAWN_PROPAGATE,
    EfsAccessPoint,
    IsolatedHost,
    bake_ami,
    cleanup_leftovers,
    kill_processes_under,
)
from sandbox.imds import ImdsData
from sandbox.netns import Relay, Vpc, list_netns

REPO = Path(__file__).resolve().parents[2]
# The instance's Python package, importable here as on an instance (PYTHONPATH /opt/ec2hub/bootstrap).
sys.path.insert(0, str(REPO / "bootstrap"))
# What EC2 gets from infra: the user data assembled from bootstrap/ (gzip-compressed).
NOTEBOOK_USER_DATA = assemble_user_data("notebook").payload
HUB_USER_DATA = assemble_user_data("hub").payload
# Two runs on one machine (two work trees) stay apart when each sets its own name (ec2hub-*).
VPC_NAME = os.environ.get("EC2HUB_TEST_VPC", "ec2hub-bt")
STATE_ROOT = Path(f"/var/tmp/{VPC_NAME}-hosts")
REGION = "us-east-1"
GATEWAY = "10.0.1.1"
AWS_ENDPOINT_PORT = 4566  # the emulator as a "VPC endpoint" on the gateway address
HUB_API_PORT = 8081

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "unshare", "nsenter", "setpriv")),
    reason="isolated hosts need root, iproute2 and util-linux",
)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def failed(request) -> bool:
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    return waiting.wait_until(predicate, timeout, what, interval=interval, error=TimeoutError)


def _children() -> list[str]:
    """Live descendants of this test process (not zombies): e.g. a hub and its proxy."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[0]))
    found, todo = [], [os.getpid()]
    while todo:
        for pid, state in parents.get(todo.pop(), []):
            todo.append(pid)
            if state != "Z":
                found.append(str(pid))
    return found


@pytest.fixture(autouse=True)
def no_leftovers():
    """Before: clear a crashed run's leftovers. After: prove the test left nothing behind."""
    cleanup_leftovers(STATE_ROOT, VPC_NAME)
    children_before = set(_children())  # other suites' session servers are not ours to judge
    yield
    netns = [n for n in list_netns() if n.startswith(VPC_NAME)]
    mounts = [m for m in Path("/proc/mounts").read_text().splitlines() if VPC_NAME in m or str(STATE_ROOT) in m]
    procs = kill_processes_under(STATE_ROOT)
    children = sorted(set(_children()) - children_before)
    # What systemd-nspawn and the VPC's dnsmasq leave unless torn down: cgroups, runtime dirs.
    runtime = sorted(
        str(p) for d in (*CGROUP_HIERARCHIES, NSPAWN_PROPAGATE, Path("/run")) if d.is_dir()
        for p in d.iterdir() if p.name.startswith(VPC_NAME)
    )
    assert (netns, mounts, procs, children, runtime) == ([], [], [], [], []), (
        "left behind (netns, mounts, host processes, children, cgroups and runtime directories)")


@pytest.fixture(scope="session")
def aws():
    """The AWS emulator (moto server) on the root namespace's loopback."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def client(aws: str, service: str):
    return boto3.client(
        service, region_name=REGION, endpoint_url=aws, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


class Network:
    """The VPC (bridge in its own namespace) and the AWS emulator reachable from it."""

    def __init__(self, aws: str):
        self.vpc = Vpc(VPC_NAME, gateways=[f"{GATEWAY}/24"]).create()
        self.relays: list[Relay] = []
        port = int(aws.rsplit(":", 1)[1])
        self.relay(listen=("0.0.0.0", AWS_ENDPOINT_PORT), listen_netns=self.vpc.netns, connect=("127.0.0.1", port))
        self.aws_endpoint = f"http://{GATEWAY}:{AWS_ENDPOINT_PORT}"

    def relay(self, **kwargs) -> Relay:
        relay = Relay(**kwargs).start()
        self.relays.append(relay)
        return relay

    def close(self):
        for relay in self.relays:
            relay.stop()
        self.vpc.destroy()


@pytest.fixture
def network(aws):
    net = Network(aws)
    yield net
    net.close()


@pytest.fixture
def efs_dir(tmp_path) -> Path:
    """The homes' file system of the test, as a machine directory (hosts see only their access points')."""
    path = tmp_path / "efs"
    path.mkdir(exist_ok=True)
    return path


def home_access_point(efs_dir: Path, tags: dict[str, str]) -> EfsAccessPoint:
    """The access point the spawner makes for the tags' user (ec2spawner.payloads), in ``efs_dir``."""
    params = access_point_params(hub_id=tags["ec2hub:hub"], file_system_id=tags["ec2hub:efs"],
                                 unix=unix_name(tags["ec2hub:user"]))
    return EfsAccessPoint.make(efs_dir, {**params, "AccessPointId": tags["ec2hub:efs-access-point"]})


@pytest.fixture
def make_host(network, efs_dir, request):
    """Factory for isolated hosts baked like ec2hub's AMI; all terminated after the test. With
    ``efs``, the host gets the access point its tags name (the user's home on ``efs_dir``)."""
    hosts: list[IsolatedHost] = []

    def make(instance_id: str, ip: str, tags: dict[str, str], *, efs: bool = True, role="ec2hub-notebook", **kwargs):
        wants_efs = efs and re.fullmatch(r"fs-[0-9a-f]{8,40}", tags.get("ec2hub:efs", "")) and (
            "ec2hub:efs-access-point" in tags)
        access_points = [home_access_point(efs_dir, tags)] if wants_efs else []
        host = IsolatedHost(
            instance_id,
            vpc=network.vpc,
            ip=ip,
            imds=ImdsData(instance_id=instance_id, region=REGION, tags=tags, role=role),
            state_root=STATE_ROOT,
            access_points=access_points,
            root_setup=bake_ami(aws_endpoint=network.aws_endpoint, region=REGION),
            **kwargs,
        )
        hosts.append(host)
        return host

    make.hosts = hosts  # for hub_state: its database outlives every host
    yield make
    for host in hosts:
        if failed(request):
            sys.stderr.write(host.logs)
        host.terminate()


def notebook_tags(user: str, *, efs: str | None = "fs-0123456789abcdef0", access_point: str | None = None,
                  **extra) -> dict[str, str]:
    tags = {
        "ec2hub:hub": "ec2hub-test",
        "ec2hub:user": user,
        "ec2hub:server": "",
        "ec2hub:class": "small",
        "ec2hub:secret-prefix": "/ec2hub/ec2hub-test/servers/",
        "Name": f"ec2hub-ec2hub-test-{user}"[:255],
    }
    if efs:
        tags["ec2hub:efs"] = efs
        # One access point per user, as the spawner makes them (a stable made-up id per user).
        tags["ec2hub:efs-access-point"] = access_point or "fsap-" + hashlib.sha256(user.encode()).hexdigest()[:17]
    tags.update(extra)
    return tags


STATE_SECRETS = {
    "ec2hub:database-secret": "ec2hub/ec2hub-test/database-0123",
    "ec2hub:cookie-secret": "ec2hub/ec2hub-test/cookie-secret-0123",
    "ec2hub:proxy-token-secret": "ec2hub/ec2hub-test/proxy-token-0123",
}


def put_state_secrets(aws: str, password: str) -> tuple[str, str]:
    """The hub's three state secrets in the emulator (as the stack makes them; the database one as
    RDS's attachment completes it, at ``GATEWAY:5432``). Returns (cookie secret, proxy token)."""
    cookie_secret, proxy_token = secrets.token_hex(32), secrets.token_hex(32)
    credentials = {"engine": "postgres", "username": "ec2hub", "password": password, "host": GATEWAY,
                   "port": 5432, "dbname": "jupyterhub"}
    sm = client(aws, "secretsmanager")
    for tag, value in (("ec2hub:database-secret", json.dumps(credentials)), ("ec2hub:cookie-secret", cookie_secret),
                       ("ec2hub:proxy-token-secret", proxy_token)):
        try:
            sm.create_secret(Name=STATE_SECRETS[tag], SecretString=value)
        except sm.exceptions.ResourceExistsException:
            sm.put_secret_value(SecretId=STATE_SECRETS[tag], SecretString=value)
    return cookie_secret, proxy_token


class HubState:
    """What infra/state.py makes for a hub, played for real: a PostgreSQL server (the RDS instance)
    on loopback, reached from the VPC at ``GATEWAY:5432`` through a relay, and the three secrets
    (database credentials as RDS's attachment completes them, cookie secret, proxy token) in the
    emulator's Secrets Manager, named in the tags :attr:`tags` gives the hub instance."""

    def __init__(self, aws: str, network: Network):
        from sandbox.postgres import PostgresServer

        self.server = PostgresServer().start()
        self.password = secrets.token_hex(16)
        self.server.create_database("jupyterhub", "ec2hub", self.password)
        network.relay(listen=(GATEWAY, 5432), listen_netns=network.vpc.netns, connect=("127.0.0.1", self.server.port))
        self.cookie_secret, self.proxy_token = put_state_secrets(aws, self.password)

    tags = STATE_SECRETS

    @property
    def values(self) -> list[str]:
        """Every secret value: none may appear in a console, a log or a file on the host's disk."""
        return [self.password, self.cookie_secret, self.proxy_token]

    def query(self, sql: str, *args):
        with self.server.connect("jupyterhub") as conn:
            return conn.execute(sql, args).fetchall()


@pytest.fixture
def hub_state(aws, network, make_host, request):
    state = HubState(aws, network)
    yield state
    # The hosts shut down first, as a hub host does before its database goes: a hub whose
    # database is gone hangs in its shutdown until it is killed (30 s of nothing per test).
    for host in make_host.hosts:
        host.stop()
    if failed(request):
        sys.stderr.write(f"--- postgres log ---\n{state.server.log[-4000:]}\n")
    state.server.stop()


class Hub:
    """A real JupyterHub + configurable-http-proxy on loopback, spawning with SecretSpawner."""

    def __init__(self, workdir: Path, aws: str, instance_id: str, server_url: str, secret_prefix: str):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.api_port, self.proxy_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.token = secrets.token_hex(16)
        config = f"""
c = get_config()  # noqa
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "secret_spawner.SecretSpawner"
c.JupyterHub.bind_url = "http://127.0.0.1:{self.proxy_port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{self.api_port}"
# Notebooks in the VPC reach the hub API through a relay on the gateway address.
c.JupyterHub.hub_connect_url = "http://{GATEWAY}:{HUB_API_PORT}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
c.JupyterHub.services = [{{"name": "test-admin", "api_token": "{self.token}"}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["test-admin"]}}]
c.Authenticator.allowed_users = {{"alice"}}
c.Spawner.env_keep = []
# A booting instance may take minutes on a loaded 2-core machine: the tests wait on the state.
c.Spawner.http_timeout = 240
c.Spawner.start_timeout = 240
c.SecretSpawner.instance_id = "{instance_id}"
c.SecretSpawner.secret_prefix = "{secret_prefix}"
c.SecretSpawner.region = "{REGION}"
c.SecretSpawner.endpoint_url = "{aws}"
c.SecretSpawner.server_url = "{server_url}"
"""
        (workdir / "jupyterhub_config.py").write_text(config)
        env = dict(os.environ)
        env["PATH"] = f"{REPO}/node_modules/.bin:{REPO}/.venv/bin:{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(Path(__file__).parent)
        self.log_path = workdir / "hub.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(workdir / "jupyterhub_config.py")],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_until(self._up, 60, "the hub API")
        except BaseException:
            self.stop()
            sys.stderr.write(f"--- hub log ---\n{self.log_path.read_text()}\n")
            raise

    def _up(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"hub exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        try:
            return self.api("GET", "/")
        except OSError:
            return None

    def wait_ready(self, host, user: str = "alice", timeout: float = 250):
        """Until ``user``'s server is ready. A spawn the hub gave up on fails at once with the hub's
        log; a timeout says what the instance's units logged, so a failure names its cause."""
        def ready():
            server = self.api("GET", f"/users/{user}")["servers"].get("")
            if server is None:
                raise AssertionError(f"the hub ended {user}'s spawn:\n{self.log_path.read_text()[-4000:]}")
            return server.get("ready")
        try:
            return wait_until(ready, timeout, f"{user}'s server ready")
        except TimeoutError as error:
            units = host.journal()[-4000:] if host.running else "(the instance is not running)"
            raise TimeoutError(f"{error}; the instance's journal (tail):\n{units}") from None

    def api(self, method: str, path: str, body=None):
        request = urllib.request.Request(
            # The hub's own port: the proxy's route to the hub is its VPC address, not reachable here.
            f"http://127.0.0.1:{self.api_port}/hub/api{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            data = resp.read()
            return json.loads(data) if data else {}

    def stop(self):
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # The proxy this hub started (JupyterHub stops it on SIGTERM; a crashed hub may not have).
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--api-port" in args and str(self.proxy_api_port).encode() in args and any(
                b"configurable-http-proxy" in a for a in args
            ):
                try:
                    os.kill(int(cmdline.parent.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def start_hub(aws, network, tmp_path, request):
    hubs: list[Hub] = []

    def start(instance_id: str, server_url: str, secret_prefix: str) -> Hub:
        hub = Hub(tmp_path / "hub", aws, instance_id, server_url, secret_prefix)
        hubs.append(hub)
        network.relay(
            listen=(GATEWAY, HUB_API_PORT), listen_netns=network.vpc.netns, connect=("127.0.0.1", hub.api_port)
        )
        return hub

    yield start
    for hub in hubs:
        hub.stop()
        if failed(request):
            sys.stderr.write(f"--- hub log ---\n{hub.log_path.read_text()}\n")
