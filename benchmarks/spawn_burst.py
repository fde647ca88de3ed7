"""100 users press "Start" at once: does EC2's RunInstances rate limit reach them?

Runs the AWS emulator in a separate process with EC2's RunInstances token bucket (5 burst,
2 per second, answering RequestLimitExceeded beyond it) and a pending time, starts ``--count``
EC2Spawners concurrently, then stops them all, and prints::

    total_s=<wall time of the starts> bucket_min_s=<what the bucket allows> \
    throttle_errors_to_users=<starts that failed> server_throttles=<RequestLimitExceeded sent> \
    instances_left_behind=<instances and secrets left after stopping>

    .venv/bin/python benchmarks/spawn_burst.py --count 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REGION = "us-east-1"
HUB = "burst"
AZS = ["us-east-1a", "us-east-1b", "us-east-1c"]


def platform(ec2):
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = {az: ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{4 * i}.0/22", AvailabilityZone=az)["Subnet"]["SubnetId"]
               for i, az in enumerate(AZS)}
    lt = ec2.create_launch_template(LaunchTemplateName="small", LaunchTemplateData={
        "ImageId": "ami-12345678", "InstanceType": "t3.medium"})["LaunchTemplate"]["LaunchTemplateId"]
    classes = [{"slug": "small", "display_name": "Small", "instance_types": ["t3.medium", "t3a.medium"],
                "ami": "ami-12345678", "default": True, "launch_template_id": lt}]
    return subnets, classes


def make_spawner(i, subnets, classes):
    from ec2spawner.spawner import EC2Spawner
    from jupyterhub import orm
    from jupyterhub.objects import Hub

    name = f"user{i:03d}"
    s = EC2Spawner(
        user=SimpleNamespace(name=name, url=f"/user/{name}/", groups=[]),
        orm_spawner=SimpleNamespace(name="", server=orm.Server(base_url=f"/user/{name}/", proto="http", ip="",
                                                               port=0, cookie_name="c")),
        hub=Hub(ip="10.0.0.5", port=8081, base_url="/hub/"), api_token=f"token-{i}",
        region=REGION, hub_id=HUB, classes=classes, subnets=subnets, secret_prefix=f"/ec2hub/{HUB}/servers/",
        fast_poll_interval=1.0, sweep_orphans=False, start_timeout=600,
        # The bucket is what is measured: nothing boots on an emulated instance, none will answer.
        wait_for_server=False,
    )
    s.user_options = {}
    return s


async def burst(count, subnets, classes):
    spawners = [make_spawner(i, subnets, classes) for i in range(count)]
    started = time.monotonic()
    results = await asyncio.gather(*(s.start() for s in spawners), return_exceptions=True)
    total = time.monotonic() - started
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures[:5]:
        print(f"start failed: {failure!r}", file=sys.stderr)
    await asyncio.gather(*(s.stop() for s in spawners), return_exceptions=True)
    from ec2spawner.watcher import InstanceWatcher

    await InstanceWatcher.stop_all()
    return total, len(failures)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--pending-s", type=float, default=3.0)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION)
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.emulator", "--port", "0", "--pending-s",
                             str(args.pending_s), "--throttle"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    endpoint = json.loads(proc.stdout.readline())["endpoint_url"]
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        import boto3

        ec2 = boto3.client("ec2", region_name=REGION)
        subnets, classes = platform(ec2)
        total, failures = asyncio.run(burst(args.count, subnets, classes))
        live = [i for r in ec2.describe_instances(Filters=[
            {"Name": "tag:ec2hub:hub", "Values": [HUB]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ])["Reservations"] for i in r["Instances"]]
        secrets = boto3.client("ssm", region_name=REGION).describe_parameters(
            ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [f"/ec2hub/{HUB}/"]}])["Parameters"]
        with urllib.request.urlopen(endpoint + "/_ec2hub/state") as response:
            counters = json.loads(response.read())["counters"]
        bucket_min = max(0.0, (args.count - 5) / 2.0) + args.pending_s
        print(f"count={args.count} total_s={total:.1f} bucket_min_s={bucket_min:.1f} "
              f"throttle_errors_to_users={failures} server_throttles={counters.get('RequestLimitExceeded', 0)} "
              f"instances_left_behind={len(live) + len(secrets)}", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
