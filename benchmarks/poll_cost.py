"""What polling N servers costs the hub: the shared watcher vs one DescribeInstances per server.

Runs the AWS emulator (moto) in a separate process so the CPU figures are the hub's own, launches
N instances tagged for one hub, then polls every server for several cycles:

* ``mode=watcher``: EC2Spawner.poll() as the hub runs it: one paginated, tag-filtered
  DescribeInstances per cycle (parsed in a worker thread), then N dictionary lookups.
* ``mode=per-server``: the naive baseline of older spawners: each poll() calls DescribeInstances for
  its own instance, blocking, on the event loop.

* ``mode=health``: as ``watcher``, with every server's health probe on (``ec2spawner.health``):
  the servers are a few loopback listeners in a separate process that answer HTTP, as
  jupyter-server does; every server is probed once per ``--health-interval`` for
  ``--health-seconds``, while JupyterHub's polls run (each server once per interval); the
  watcher's DescribeInstances is left out (``mode=watcher`` measures it). ``cpu_ms_per_probe`` is the process's whole CPU time
  (polls and the 5 ms ticker included) divided by the probes: an upper bound.

loop_block_max_ms is the longest stall of the event loop, seen by a 5 ms ticker task (wall time:
on a loaded machine it includes the time the OS gave the CPU to other processes);
loop_cpu_max_ms is the longest single callback of the loop in CPU time of the loop's thread
(the longest synchronous stretch, whatever the machine's load). rss_mb is the process's resident
memory at the end, with N spawners loaded and the watcher's snapshot of N instances.

    .venv/bin/python benchmarks/poll_cost.py --servers 1000 --cycles 3
    .venv/bin/python benchmarks/poll_cost.py --servers 1000 --modes health --health-interval 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
HUB = "bench"


def start_emulator_process() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.emulator", "--port", "0", "--pending-s", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"})
    endpoint = json.loads(proc.stdout.readline())["endpoint_url"]
    return proc, endpoint


def launch(ec2, n: int) -> list[str]:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/18", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    ids = []
    while len(ids) < n:
        batch = min(250, n - len(ids))
        answer = ec2.run_instances(ImageId="ami-12345678", InstanceType="t3.medium", SubnetId=subnet,
                                   MinCount=batch, MaxCount=batch, TagSpecifications=[{
                                       "ResourceType": "instance", "Tags": [{"Key": "ec2hub:hub", "Value": HUB},
                                                                        {"Key": "ec2hub:user", "Value": "bench"}]}])
        ids += [i["InstanceId"] for i in answer["Instances"]]
    return ids


class Ticker:
    """Measures the longest gap between 5 ms ticks (how long the loop was blocked, wall time) and
    the longest callback of the loop in its thread's CPU time."""

    def __init__(self):
        self.max_ms = 0.0
        self.cpu_max_ms = 0.0
        self._task = None
        self._run_handle = None

    async def _run(self):
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.max_ms = max(self.max_ms, (now - last - 0.005) * 1000)
            last = now

    def __enter__(self):
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._run_handle = run = asyncio.events.Handle._run
        ticker = self

        def timed(handle):
            started = time.thread_time()
            try:
                return run(handle)
            finally:
                ticker.cpu_max_ms = max(ticker.cpu_max_ms, (time.thread_time() - started) * 1000)

        asyncio.events.Handle._run = timed
        return self

    def __exit__(self, *exc):
        asyncio.events.Handle._run = self._run_handle
        self._task.cancel()


def rss_mb(pid: int | str = "self") -> float:
    """A process's resident memory now (VmRSS), in MB: this one's unless ``pid`` is given."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


POLL_SLICE = 100  # servers polled per loop iteration (JupyterHub polls each on its own timer)


def make_spawners(ids: list[str], ports: list[int] | None = None, interval: float = 30.0):
    """One EC2Spawner per instance, loaded from its state; with ``ports``, each has a server (as
    JupyterHub gives a ready one) reached at 127.0.0.1 on one of the listeners, probed."""
    from ec2spawner.spawner import EC2Spawner
    from jupyterhub import orm

    spawners = []
    for i, iid in enumerate(ids):
        extra = {}
        if ports:
            server = orm.Server(base_url=f"/user/u{i}/", proto="http", ip="", port=0, cookie_name="c")
            extra = {"orm_spawner": SimpleNamespace(name="", server=server), "notebook_port": ports[i % len(ports)],
                     "server_url_template": "http://127.0.0.1:{port}", "health_interval": interval}
        s = EC2Spawner(user=SimpleNamespace(name=f"u{i}", groups=[]), region=REGION, hub_id=HUB,
                       secret_prefix="/bench/", subnets={"us-east-1a": "s"}, sweep_orphans=False,
                       poll_interval=3600, health_check=bool(ports), **extra)
        s.load_state({"instance_id": iid})
        spawners.append(s)
    return spawners


LISTENERS = 4


def serve_listeners() -> None:
    """The probes' targets (run in a process of its own): LISTENERS loopback ports answering HTTP."""
    async def answer(reader, writer):
        await reader.readline()
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n'
                     b'Connection: close\r\n\r\n{"version": "2.21.1"}')
        await writer.drain()
        writer.close()

    async def main():
        servers = [await asyncio.start_server(answer, "127.0.0.1", 0, backlog=1024) for _ in range(LISTENERS)]
        print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def run_health(ids, ports, interval: float, seconds: float):
    from ec2spawner import health

    spawners = make_spawners(ids, ports, interval)
    watcher = spawners[0]._watcher()
    await watcher.refresh()
    assert await asyncio.gather(*(s.poll() for s in spawners)) == [None] * len(spawners)  # all watched now
    before, cpu0 = health.COUNTERS.as_dict(), time.process_time()
    started = time.monotonic()
    with Ticker() as ticker:
        # JupyterHub polls each server once per poll_interval (here: the probe interval) meanwhile.
        tick, n = 0, len(spawners)
        while time.monotonic() - started < seconds:
            part = spawners[tick * n // 10 % n:(tick + 1) * n // 10 % n or n]
            statuses = await asyncio.gather(*(s.poll() for s in part))
            assert statuses == [None] * len(part), "no server may be declared dead"
            tick += 1
            await asyncio.sleep(interval / 10)
    elapsed = time.monotonic() - started
    after = health.COUNTERS.as_dict()
    probes = after["attempts"] - before["attempts"]
    failed = after["failures"] + after["hub_side"] - before["failures"] - before["hub_side"]
    cpu_ms = (time.process_time() - cpu0) * 1000
    await health.HealthProber.stop_all()
    await watcher.stop()
    return probes / elapsed, cpu_ms / max(probes, 1), cpu_ms / elapsed / 10, failed, ticker.max_ms


async def run_watcher(ids, cycles):
    from ec2spawner.aws import Aws

    spawners = make_spawners(ids)
    aws = Aws.for_region(REGION)
    watcher = spawners[0]._watcher()
    await watcher.refresh()  # warm up: clients, connection
    assert len(watcher.snapshot) == len(ids), "the watcher should list every instance"
    calls0, cpu0 = aws.calls.get("DescribeInstances", 0), time.process_time()
    with Ticker() as ticker:
        for _ in range(cycles):
            await watcher.refresh()
            # JupyterHub polls each server on its own timer, not all in one loop iteration.
            for start in range(0, len(spawners), POLL_SLICE):
                part = spawners[start:start + POLL_SLICE]
                statuses = await asyncio.gather(*(s.poll() for s in part))
                assert statuses == [None] * len(part), "every server should be running"
        await asyncio.sleep(0.02)
    calls = aws.calls.get("DescribeInstances", 0) - calls0
    assert len(watcher.snapshot) == len(ids)
    await watcher.stop()
    return calls / cycles, (time.process_time() - cpu0) * 1000 / cycles, ticker.max_ms, ticker.cpu_max_ms


async def run_per_server(ids, cycles):
    from ec2spawner.aws import Aws

    client = Aws(REGION).client("ec2")
    client.describe_instances(InstanceIds=ids[:1])  # warm up

    async def poll(iid):  # the old way: a blocking boto3 call inside the coroutine
        answer = client.describe_instances(InstanceIds=[iid])
        state = answer["Reservations"][0]["Instances"][0]["State"]["Name"]
        return None if state in ("pending", "running") else 0

    calls, cpu0 = 0, time.process_time()
    with Ticker() as ticker:
        for _ in range(cycles):
            statuses = await asyncio.gather(*(poll(i) for i in ids))
            calls += len(ids)
            assert statuses == [None] * len(ids)
        await asyncio.sleep(0.02)
    return calls / cycles, (time.process_time() - cpu0) * 1000 / cycles, ticker.max_ms, ticker.cpu_max_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--modes", default="watcher,per-server")
    parser.add_argument("--health-interval", type=float, default=10.0)
    parser.add_argument("--health-seconds", type=float, default=25.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_listeners()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION)
    proc, endpoint = start_emulator_process()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        import boto3

        ids = launch(boto3.client("ec2", region_name=REGION), args.servers)
        for mode in args.modes.split(","):
            if mode == "health":
                rate, cpu_per_probe, cpu_pct, failed, block_ms = asyncio.run(
                    run_health(ids, listener_ports(), args.health_interval, args.health_seconds))
                print(f"mode=health servers={args.servers} interval_s={args.health_interval:g} "
                      f"probes_per_s={rate:.0f} cpu_ms_per_probe={cpu_per_probe:.2f} cpu_pct={cpu_pct:.1f} "
                      f"failed_probes={failed} loop_block_max_ms={block_ms:.0f}", flush=True)
                continue
            runner = run_watcher if mode == "watcher" else run_per_server
            calls, cpu_ms, block_ms, stretch_ms = asyncio.run(runner(ids, args.cycles))
            print(f"mode={mode} servers={args.servers} describe_calls_per_cycle={calls:g} "
                  f"cpu_ms_per_cycle={cpu_ms:.0f} loop_block_max_ms={block_ms:.0f} "
                  f"loop_cpu_max_ms={stretch_ms:.0f} rss_mb={rss_mb():.0f} load1={os.getloadavg()[0]:.1f}",
                  flush=True)
    finally:
        for child in (proc, *_listeners):
            child.terminate()
            child.wait(10)


_listeners: list[subprocess.Popen] = []


def listener_ports() -> list[int]:
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    _listeners.append(child)
    return json.loads(child.stdout.readline())


if __name__ == "__main__":
    main()
