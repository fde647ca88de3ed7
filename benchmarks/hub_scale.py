"""A real JupyterHub restarted with N running servers in its database: time until every one is polled.

The hub is the project's own configuration (``ec2spawner.hubconfig.apply_settings``, as the chaos
lab runs it: dummy authenticator, SQLite, configurable-http-proxy) against the AWS emulator
(``python -m sandbox.emulator``) in a process of its own; the spawner's settings are the
defaults (health probes on, sweeper on, ``poll_interval`` 30 s). The benchmark

1. launches N instances in the emulator (RunInstances in batches), tagged as the spawner tags
   them (``payloads.instance_tags``; the per-user tags with ``payloads.rename_tags``), in a
   ``127.0.0.0/16`` VPC so every private IP is a loopback address;
2. writes the hub's database as a hub that ran those servers leaves it, through
   ``jupyterhub.orm``: tables created and stamped and the default roles made as JupyterHub's first
   start does, N users with the ``user`` role, each with a running default server (a ``Server``
   row at its instance's private IP and the notebook port, spawner state naming its instance as
   ``EC2Spawner.get_state`` does);
3. starts the hub on it (the restart) and times it.

The servers are one process answering HTTP on the notebook port of every loopback address (as
jupyter-server's ``/api`` does), because JupyterHub's start-up check (``init_spawners`` →
``check_spawner``) polls each spawner and then waits for its server's HTTP answer
(``User._wait_up``). No notebook processes, no SSM secrets (the restart reads none).

"Polled once" is: the hub logged ``Initialized N spawners`` (JupyterHub's ``init_spawners``
finished: every ``poll()`` returned and every server answered) and then its REST API listed all
N servers ``ready`` with none ``pending``. ``hub_restart_s`` is from the second ``jupyterhub``
process's launch to that; ``api_up_s`` is its first API answer (JupyterHub serves after
``init_spawners_timeout``, 10 s, even if the checks go on); ``init_spawners_s`` is JupyterHub's own
figure from its log. ``describe_s`` is one full DescribeInstances of the hub's instances by
the benchmark itself before the restart (what the first poll waits for; most of it is the
emulator writing pages). ``hub_rss_mb`` is the hub process's VmRSS (from /proc) at that moment. The
run fails (exit status 1) if any server was not reported running, if a poll did not get the
watcher's snapshot (``no_snapshot``), or if JupyterHub rewrote a server's stored URL
(``url_rewrites``: ``get_url`` disagreed with the database).

    nice -n 10 .venv/bin/python benchmarks/hub_scale.py --servers 1000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import waiting  # the shared test helpers: free_port, wait_until
from poll_cost import rss_mb, start_emulator_process

BIN = Path(sys.executable).parent
REGION = "us-east-1"
AZ = "us-east-1a"
HUB = "hubscale"
TOKEN = "hub-scale-token-0123456789abcdef"
BATCH = 250  # instances per RunInstances (MinCount = MaxCount)


def serve_http(port: int) -> None:
    """Every server (run in a process of its own): HTTP 200 on ``0.0.0.0:port``, every loopback address."""
    import asyncio

    async def answer(reader, writer):
        await reader.readline()
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n'
                     b'X-JupyterHub-Version: 6.1.1\r\nConnection: close\r\n\r\n{"version": "2.21.1"}')
        await writer.drain()
        writer.close()

    async def main():
        await asyncio.start_server(answer, "0.0.0.0", port, backlog=4096)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def launch(ec2, n: int, prefix: str) -> list[dict]:
    """N running instances tagged as the spawner tags user ``u<i>``'s default server."""
    from ec2spawner.payloads import instance_tags, rename_tags

    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/17", AvailabilityZone=AZ)["Subnet"]["SubnetId"]
    common = [t for t in instance_tags(hub_id=HUB, user="-", server="", class_slug="small",
                                       secret_prefix=prefix, efs_id=None) if t["Key"] not in ("Name",)]
    instances = []
    while len(instances) < n:
        batch = min(BATCH, n - len(instances))
        answer = ec2.run_instances(ImageId="ami-12345678", InstanceType="t3.medium", SubnetId=subnet,
                                   MinCount=batch, MaxCount=batch,
                                   TagSpecifications=[{"ResourceType": "instance", "Tags": common}])
        instances += answer["Instances"]
    users = [f"u{i:05d}" for i in range(n)]

    def tag(pair):
        user, instance = pair
        ec2.create_tags(Resources=[instance["InstanceId"]], Tags=rename_tags(hub_id=HUB, user=user, server=""))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(tag, zip(users, instances, strict=True)))
    return [{"user": u, "instance_id": i["InstanceId"], "ip": i["PrivateIpAddress"], "subnet_id": subnet}
            for u, i in zip(users, instances, strict=True)]


def launch_template(ec2) -> str:
    return ec2.create_launch_template(LaunchTemplateName="small", LaunchTemplateData={
        "ImageId": "ami-12345678", "InstanceType": "t3.medium",
        "MetadataOptions": {"HttpTokens": "required", "InstanceMetadataTags": "enabled"},
    })["LaunchTemplate"]["LaunchTemplateId"]


def describe_once(endpoint: str, n: int) -> float:
    """Seconds of one watcher refresh's DescribeInstances (all pages, parsed) from this process:
    what the restarted hub's first poll waits for, most of it the emulator writing its pages."""
    import asyncio

    from ec2spawner.aws import Aws
    from ec2spawner.payloads import hub_filters

    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")

    async def describe():
        started = time.monotonic()
        views = await Aws(REGION).describe_instances(hub_filters(HUB))
        assert len(views) == n, f"the describe listed {len(views)} of {n} instances"
        return time.monotonic() - started

    return asyncio.run(describe())


def write_config(workdir: Path, ports: dict, subnet: str, prefix: str, template: str, profile: str) -> None:
    settings = {
        "region": REGION, "hub_id": HUB, "subnets": {AZ: subnet}, "secret_prefix": prefix,
        "classes": [{"slug": "small", "display_name": "Small", "instance_types": ["t3.medium"],
                     "ami": "ami-12345678", "default": True, "launch_template_id": template}],
        "proxy_port": ports["proxy"], "hub_api_port": ports["hub"], "notebook_port": ports["notebook"],
        "auth": {"type": "dummy", "admin_users": ["admin"]},
    }
    (workdir / "settings.json").write_text(json.dumps(settings))
    (workdir / "jupyterhub_config.py").write_text(f"""
import json
from ec2spawner.hubconfig import apply_settings
from ec2spawner.settings import HubSettings

apply_settings(c, HubSettings.model_validate(json.load(open({str(workdir / 'settings.json')!r}))),
               hub_connect_ip="127.0.0.1", hub_ip="127.0.0.1")
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.db_url = "sqlite:///{workdir / 'hub.sqlite'}"
c.JupyterHub.cookie_secret_file = {str(workdir / 'cookie_secret')!r}
c.JupyterHub.pid_file = {str(workdir / 'hub.pid')!r}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports['proxy_api']}"
c.ConfigurableHTTPProxy.command = [{str(REPO / 'node_modules/.bin/configurable-http-proxy')!r}]
c.ConfigurableHTTPProxy.pid_file = {str(workdir / 'proxy.pid')!r}
c.JupyterHub.services = [{{"name": "bench", "api_token": {TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"], "scopes": ["admin:users", "list:users",
                                                                                 "read:servers"]}}]
""" + (f"""
import cProfile, signal
_profile = cProfile.Profile()
_profile.enable()
signal.signal(signal.SIGUSR1, lambda *_: (_profile.disable(), _profile.dump_stats({profile!r})))
""" if profile else ""))


def seed(workdir: Path, servers: list[dict], port: int) -> None:
    """N users, each with a running default server, written as JupyterHub writes them after a spawn."""
    from jupyterhub import orm, roles

    # JupyterHub's own first start does this: create the tables and stamp the schema's revision,
    # then its default roles; a user made through the REST API or a login gets the "user" role.
    db = orm.new_session_factory(f"sqlite:///{workdir / 'hub.sqlite'}")()
    for role in roles.get_default_roles():
        roles.create_role(db, role, commit=False)
    user_role = orm.Role.find(db, "user")
    for s in servers:
        user = orm.User(name=s["user"])
        user.roles.append(user_role)
        spawner = orm.Spawner(name="", user=user, started=orm.utcnow(), last_activity=orm.utcnow(),
                              state={"instance_id": s["instance_id"], "instance_class": "small",
                                     "subnet_id": s["subnet_id"], "attempt": "1"})
        spawner.server = orm.Server(proto="http", ip=s["ip"], port=port, base_url=f"/user/{s['user']}/",
                                    cookie_name="jupyterhub-user-" + s["user"])
        db.add_all([user, spawner])
    db.commit()
    db.close()


class Hub:
    def __init__(self, workdir: Path, env: dict, api: str):
        self.workdir, self.env, self.api = workdir, env, api
        self.proc: subprocess.Popen | None = None
        self.launched = 0.0

    def start(self) -> None:
        log = open(self.workdir / "hub.log", "w")  # noqa: SIM115 (the child keeps its own descriptor)
        self.launched = time.monotonic()
        self.proc = subprocess.Popen([str(BIN / "jupyterhub"), "-f", "jupyterhub_config.py"], cwd=self.workdir,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def log(self) -> str:
        return (self.workdir / "hub.log").read_text(errors="replace")

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the hub exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        try:
            return requests.get(self.api + "/", timeout=5).ok
        except requests.RequestException:
            return False

    def servers(self) -> list[dict]:
        """Every user's default server as the REST API shows it (paged as JupyterHub pages)."""
        found, offset = [], 0
        headers = {"Authorization": f"token {TOKEN}", "Accept": "application/jupyterhub-pagination+json"}
        while True:
            page = requests.get(self.api + "/users", params={"offset": offset, "limit": 200, "state": "active"},
                                headers=headers, timeout=60).json()
            found += [u["servers"][""] for u in page["items"] if "" in u.get("servers", {})]
            if not page["_pagination"]["next"]:
                return found
            offset = page["_pagination"]["next"]["offset"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # JupyterHub starts the proxy in a session of its own and leaves it running when it
        # stops (a restarted hub finds its routes); it writes the proxy's pid here.
        pid_file = self.workdir / "proxy.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


def measure(n: int, workdir: Path, profile: str = "") -> dict:
    prefix = f"/ec2hub/{HUB}/servers/"
    emulator, endpoint = start_emulator_process()
    listener = None
    hub = None
    try:
        ports = {name: waiting.free_port("0.0.0.0") for name in ("proxy", "proxy_api", "hub", "notebook")}
        listener = subprocess.Popen([sys.executable, __file__, "--serve", str(ports["notebook"])],
                                    stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline().strip() == "ready"
        creds = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint, **creds)
        started = time.monotonic()
        servers = launch(ec2, n, prefix)
        launch_s = time.monotonic() - started
        describe_s = describe_once(endpoint, n)
        write_config(workdir, ports, servers[0]["subnet_id"], prefix, launch_template(ec2), profile)
        env = {**os.environ, "PATH": f"{REPO / 'node_modules/.bin'}:{BIN}:{os.environ['PATH']}",
               "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": REGION}
        env.pop("AWS_PROFILE", None)
        seed(workdir, servers, ports["notebook"])
        hub = Hub(workdir, env, f"http://127.0.0.1:{ports['proxy']}/hub/api")
        hub.start()
        waiting.wait_until(hub.answers, 600, "the restarted hub's API", interval=0.2)
        api_up_s = time.monotonic() - hub.launched
        done = waiting.wait_until(lambda: re.search(r"Initialized (\d+) spawners in ([\d.]+) seconds", hub.log()),
                                  900, "init_spawners to finish", interval=0.2)
        listed = hub.servers()
        restart_s = time.monotonic() - hub.launched
        rss = rss_mb(hub.proc.pid)
        if profile:
            hub.proc.send_signal(signal.SIGUSR1)
            waiting.wait_until(lambda: Path(profile).exists(), 300, "the profile")
        log = hub.log()
        return {
            "servers": n, "initialized": int(done.group(1)), "init_spawners_s": float(done.group(2)),
            "api_up_s": api_up_s, "hub_restart_s": restart_s, "hub_rss_mb": rss,
            "ready": sum(1 for s in listed if s["ready"] and not s["pending"]),
            "still_running": log.count(" still running"),
            "stopped_while_down": log.count("appears to have stopped while the Hub was down"),
            "no_snapshot": log.count("cannot ask EC2 about"),
            "url_rewrites": log.count(" had invalid url "),
            "launch_s": launch_s, "describe_s": describe_s,
        }
    finally:
        if hub is not None:
            hub.stop()
        for child in (listener, emulator):
            if child is not None:
                child.terminate()
                child.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (hub.log, hub.sqlite)")
    parser.add_argument("--profile", default="", help="write a cProfile of the restarted hub's main thread here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_http(args.serve)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="hub-scale-"))
    try:
        load = os.getloadavg()[0]
        r = measure(args.servers, workdir, args.profile)
        print(f"servers={r['servers']} hub_restart_s={r['hub_restart_s']:.1f} hub_rss_mb={r['hub_rss_mb']:.0f} "
              f"init_spawners_s={r['init_spawners_s']:.1f} api_up_s={r['api_up_s']:.1f} "
              f"polled={r['initialized']} ready={r['ready']} still_running={r['still_running']} "
              f"stopped_while_down={r['stopped_while_down']} no_snapshot={r['no_snapshot']} "
              f"url_rewrites={r['url_rewrites']} "
              f"describe_s={r['describe_s']:.1f} launch_s={r['launch_s']:.0f} load1={load:.1f}/{os.getloadavg()[0]:.1f}", flush=True)
        n = r["servers"]
        ok = r["initialized"] == r["ready"] == r["still_running"] == n and not r["stopped_while_down"] \
            and not r["no_snapshot"] and not r["url_rewrites"]
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"workdir={workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
