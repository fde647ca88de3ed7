"""The orphan sweeper: orphans go, live and pending servers and kept stopped instances stay."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from ec2spawner.aws import Aws, InstanceView
from ec2spawner.requests import instance_tags
from ec2spawner.spawner import EC2Spawner
from ec2spawner.sweeper import (
    Decision,
    OrphanSweeper,
    find_orphan_secrets,
    find_orphans,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def view(iid, state="running", age_s=3600, user="u", server=""):
    return InstanceView(instance_id=iid, state=state, launch_time=NOW - timedelta(seconds=age_s),
                        tags={"ec2hub:user": user, "ec2hub:server": server})


def test_find_orphans_decides_by_owner_grace_and_state():
    instances = {v.instance_id: v for v in [
        view("i-owned"), view("i-old"), view("i-young", "pending", age_s=30),
        view("i-gone", "terminated"), view("i-stopped-new", "stopped", age_s=100, user="s"),
        view("i-stopped-old", "stopped", age_s=5000, user="s"),
    ]}
    assert find_orphans(instances, {"i-owned"}, now=NOW, grace=600, keep_stopped=True) == [
        Decision("i-old", True, "running, no server owns it, launched 3600 s ago"),
        Decision("i-stopped-new", False, "stopped, kept for its server's next start"),
        Decision("i-stopped-old", True, "stopped, no server owns it, launched 5000 s ago"),
        Decision("i-young", False, "pending, no owner yet, launched 30 s ago (grace 600 s)"),
    ]
    assert [d.instance_id for d in find_orphans(instances, set(), now=NOW, grace=600, keep_stopped=False)
            if d.terminate] == ["i-old", "i-owned", "i-stopped-old"]


def test_find_orphan_secrets():
    p = "/x/"
    secrets = {p + "i-owned": NOW, p + "i-gone": NOW, p + "i-never-old": NOW - timedelta(hours=1),
               p + "i-never-new": NOW, p + "i-orphan": NOW}
    instances = {"i-owned": view("i-owned"), "i-gone": view("i-gone", "terminated"), "i-orphan": view("i-orphan")}
    assert find_orphan_secrets(secrets, p, instances, {"i-owned"}, {"i-orphan"}, now=NOW, grace=600) == [
        p + "i-gone", p + "i-never-old", p + "i-orphan"]


async def test_sweeper_terminates_orphan_and_spares_live_and_pending_servers(
        new_spawner, emu, ec2, ssm, hub_id, live, hub_secrets, caplog):
    # An orphan: launched for this hub (e.g. by a hub that died), owned by no server.
    orphan = ec2.run_instances(
        ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.medium",
        TagSpecifications=[{"ResourceType": "instance", "Tags": instance_tags(
            hub_id=hub_id, user="ghost", server="", class_slug="small", secret_prefix="/x/", efs_id=None)}],
    )["Instances"][0]["InstanceId"]
    ssm.put_parameter(Name=f"/ec2hub/{hub_id}/servers/{orphan}", Type="SecureString", Value="{}")

    running = new_spawner("runner")
    await running.start()
    emu.set_timing(pending_s=30)
    pending = new_spawner("starter")
    spawn = asyncio.create_task(pending.start())
    while not pending.instance_id:
        await asyncio.sleep(0.05)

    watcher = running._watcher()
    sweeper = OrphanSweeper(Aws.for_region("us-east-1"), watcher, hub_id=hub_id,
                            secret_prefix=f"/ec2hub/{hub_id}/servers/",
                            owned=lambda: EC2Spawner.owned_instance_ids(hub_id), grace=0)
    caplog.set_level(logging.INFO)
    decisions = await sweeper.sweep_once()

    assert [(d.instance_id, d.terminate) for d in decisions] == [(orphan, True)]
    assert sorted(i["InstanceId"] for i in live()) == sorted([running.instance_id, pending.instance_id])
    assert f"terminating orphan {orphan} (user 'ghost' server '')" in caplog.text
    assert f"deleting orphan secret /ec2hub/{hub_id}/servers/{orphan}" in caplog.text
    assert set(hub_secrets()) == {f"/ec2hub/{hub_id}/servers/{running.instance_id}",
                                  f"/ec2hub/{hub_id}/servers/{pending.instance_id}"}
    spawn.cancel()
    await asyncio.gather(spawn, return_exceptions=True)


async def test_sweeper_runs_once_per_hub_from_the_spawner(new_spawner, hub_id):
    a, b = new_spawner("a", sweep_orphans=True), new_spawner("b", sweep_orphans=True)
    a._watcher(), b._watcher()
    loop_sweepers = OrphanSweeper._registry[asyncio.get_running_loop()]
    assert [key for key in loop_sweepers if key[0] == hub_id] == [(hub_id, "us-east-1")]
