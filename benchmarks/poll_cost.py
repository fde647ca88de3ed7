"""What polling N servers costs the hub: the shared watcher vs one DescribeInstances per server.

Runs the AWS emulator (moto) in a separate process so the CPU figures are the hub's own, launches
N instances tagged for one hub, then polls every server for several cycles:

* ``mode=watcher``: EC2Spawner.poll() as the hub runs it: one paginated, tag-filtered
  DescribeInstances per cycle (parsed in a worker thread), then N dictionary lookups.
* ``mode=per-server``: the naive baseline of older spawners: each poll() calls DescribeInstances for
  its own instance, blocking, on the event loop.

loop_block_max_ms is the longest stall of the event loop, seen by a 5 ms ticker task.

    .venv/bin/python benchmarks/poll_cost.py --servers 1000 --cycles 3
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
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
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
    """Measures the longest gap between 5 ms ticks: how long the loop was blocked."""

    def __init__(self):
        self.max_ms = 0.0
        self._task = None

    async def _run(self):
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.max_ms = max(self.max_ms, (now - last - 0.005) * 1000)
            last = now

    def __enter__(self):
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc):
        self._task.cancel()


def make_spawners(ids: list[str]):
    from ec2spawner.spawner import EC2Spawner

    spawners = []
    for i, iid in enumerate(ids):
        s = EC2Spawner(user=SimpleNamespace(name=f"u{i}", groups=[]), region=REGION, hub_id=HUB,
                       secret_prefix="/bench/", subnets={"us-east-1a": "s"}, sweep_orphans=False,
                       poll_interval=3600)
        s.load_state({"instance_id": iid})
        spawners.append(s)
    return spawners


async def run_watcher(ids, cycles):
    from ec2spawner.aws import Aws

    spawners = make_spawners(ids)
    aws = Aws.for_region(REGION)
    watcher = spawners[0]._watcher()
    await watcher.refresh()  # warm up: clients, connection
    calls0, cpu0 = aws.calls.get("DescribeInstances", 0), time.process_time()
    with Ticker() as ticker:
        for _ in range(cycles):
            await watcher.refresh()
            statuses = await asyncio.gather(*(s.poll() for s in spawners))
            assert statuses == [None] * len(spawners), "every server should be running"
        await asyncio.sleep(0.02)
    calls = aws.calls.get("DescribeInstances", 0) - calls0
    await watcher.stop()
    return calls / cycles, (time.process_time() - cpu0) * 1000 / cycles, ticker.max_ms


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
    return calls / cycles, (time.process_time() - cpu0) * 1000 / cycles, ticker.max_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--modes", default="watcher,per-server")
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION)
    proc, endpoint = start_emulator_process()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        import boto3

        ids = launch(boto3.client("ec2", region_name=REGION), args.servers)
        for mode in args.modes.split(","):
            runner = run_watcher if mode == "watcher" else run_per_server
            calls, cpu_ms, block_ms = asyncio.run(runner(ids, args.cycles))
            print(f"mode={mode} servers={args.servers} describe_calls_per_cycle={calls:g} "
                  f"cpu_ms_per_cycle={cpu_ms:.0f} loop_block_max_ms={block_ms:.0f}", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
