"""The orphan sweeper: orphans go, live and pending servers and kept stopped instances stay."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from ec2spawner.aws import Aws, InstanceView
from ec2spawner.payloads import instance_tags
from ec2spawner.spawner import EC2Spawner
from ec2spawner.sweeper import (
    Decision,
    OrphanSweeper,
    Ownership,
    find_orphan_secrets,
    find_orphans,
)
from waiting import until

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def view(iid, state="running", age_s=3600, user="u", server=""):
    return InstanceView(instance_id=iid, state=state, launch_time=NOW - timedelta(seconds=age_s),
                        tags={"ec2hub:user": user, "ec2hub:server": server})


def test_find_orphans_decides_by_owner_grace_and_state():
    instances = {v.instance_id: v for v in [
        view("i-owned"), view("i-old"), view("i-young", "pending", age_s=30),
        view("i-gone", "terminated"), view("i-stopped-new", "stopped", age_s=100, user="s"),
        view("i-stopped-old", "stopped", age_s=5000, user="s"),
        view("i-kept-by-state", "stopped", age_s=9000, user="k"),
        view("i-server-deleted", "stopped", age_s=700, user="deleted"),
        InstanceView(instance_id="i-hub-host", state="running", launch_time=NOW - timedelta(days=9),
                     tags={"ec2hub:hub": "h"}),  # the hub host: no ec2hub:user tag
    ]}
    ownership = Ownership.of({"i-owned", "i-kept-by-state"}, {("s", ""), ("k", ""), ("u", "")})
    assert find_orphans(instances, ownership, now=NOW, grace=600, keep_stopped=True) == [
        Decision("i-old", True, "running, no server owns it, launched 3600 s ago"),
        Decision("i-server-deleted", True, "stopped, no server owns it, launched 700 s ago"),
        Decision("i-stopped-new", False, "stopped, kept for its server's next start"),
        Decision("i-stopped-old", True, "stopped, no server owns it, launched 5000 s ago"),
        Decision("i-young", False, "pending, no owner yet, launched 30 s ago (grace 600 s)"),
    ]
    assert [d.instance_id for d in find_orphans(instances, Ownership(), now=NOW, grace=600, keep_stopped=False)
            if d.terminate] == ["i-kept-by-state", "i-old", "i-owned", "i-server-deleted", "i-stopped-old"]


def test_hub_ownership_is_every_instance_a_saved_state_names():
    from jupyterhub import orm

    db = orm.new_session_factory("sqlite://")()
    alice, bob, carol = (orm.User(name=n) for n in ("alice", "bob", "carol"))
    db.add_all([alice, bob, carol])
    db.commit()
    db.add_all([
        orm.Spawner(user=alice, name="", state={"instance_id": "i-running", "instance_class": "small"}),
        orm.Spawner(user=alice, name="train", state={"kept_instance_id": "i-kept"}),  # stopped, no object loaded
        orm.Spawner(user=bob, name="", state={}),
        orm.Spawner(user=carol, name="x", state=None),
    ])
    db.commit()
    assert EC2Spawner.hub_ownership(db, "hub-without-live-spawners") == Ownership.of(
        {"i-running", "i-kept"}, {("alice", ""), ("alice", "train"), ("bob", ""), ("carol", "x")})


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
    await until(lambda: pending.instance_id, what="the pending start's instance")

    watcher = running._watcher()
    sweeper = OrphanSweeper(Aws.for_region("us-east-1"), watcher, hub_id=hub_id,
                            secret_prefix=f"/ec2hub/{hub_id}/servers/",
                            owned=lambda: Ownership.of(EC2Spawner.owned_instance_ids(hub_id)), grace=0)
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


def orphan_of(ec2, hub_id, user="ghost", server=""):
    """An instance launched for this hub (e.g. by a hub that died mid-start), owned by no server."""
    return ec2.run_instances(
        ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.medium",
        TagSpecifications=[{"ResourceType": "instance", "Tags": instance_tags(
            hub_id=hub_id, user=user, server=server, class_slug="small", secret_prefix="/x/", efs_id=None)}],
    )["Instances"][0]["InstanceId"]


def sweeper_for(spawner, owned, hub_id):
    return OrphanSweeper(Aws.for_region("us-east-1"), spawner._watcher(), hub_id=hub_id,
                         secret_prefix=f"/ec2hub/{hub_id}/servers/", owned=owned, grace=0)


async def test_sweeper_rechecks_ownership_right_before_terminating(new_spawner, emu, ec2, hub_id, live):
    iid = orphan_of(ec2, hub_id)
    answers = iter([Ownership(), Ownership.of({iid})])  # adopted between the decision and the call
    sweeper = sweeper_for(new_spawner(), lambda: next(answers, Ownership.of({iid})), hub_id)
    decisions = await sweeper.sweep_once()
    assert [(d.instance_id, d.terminate) for d in decisions] == [(iid, True)]
    assert [i["InstanceId"] for i in live()] == [iid]


async def test_a_start_never_adopts_an_instance_the_sweeper_is_ending(new_spawner, emu, ec2, hub_id, live, monkeypatch):
    import threading

    ghost = orphan_of(ec2, hub_id, user="alice")  # alice's instance from a crashed hub, past its grace
    in_terminate, release = threading.Event(), threading.Event()
    invoke = Aws._invoke

    def slow_terminate(self, service, operation, params):
        if operation == "TerminateInstances" and params["InstanceIds"] == [ghost]:
            in_terminate.set()
            release.wait(10)
        return invoke(self, service, operation, params)

    monkeypatch.setattr(Aws, "_invoke", slow_terminate)
    spawner = new_spawner("alice")
    sweep = asyncio.create_task(sweeper_for(spawner, Ownership, hub_id).sweep_once())
    await until(in_terminate.is_set, what="the sweeper's TerminateInstances in flight")
    start = asyncio.create_task(spawner.start())  # adopting now would adopt a dying instance
    await until(lambda: spawner.instance_id, what="the start's own instance")
    release.set()
    await sweep
    await start
    assert spawner.instance_id != ghost
    assert [i["InstanceId"] for i in live("alice")] == [spawner.instance_id]


async def test_sweeper_starts_once_per_hub(new_spawner, hub_id):
    from jupyterhub import orm

    db = orm.new_session_factory("sqlite://")()
    config = new_spawner("a").config
    config.EC2Spawner.hub_id, config.EC2Spawner.region, config.EC2Spawner.sweep_orphans = hub_id, "us-east-1", True
    first = EC2Spawner.start_sweeper(config=config, db=db, log=logging.getLogger("test"))
    again = EC2Spawner.start_sweeper(config=config, db=db, log=logging.getLogger("test"))
    assert len(first) == 1 and again[0] is first[0]
    mine = [s for s in OrphanSweeper._registry.values() if s.hub_id == hub_id]
    assert [(s.hub_id, s.aws.region) for s in mine] == [(hub_id, "us-east-1")]
