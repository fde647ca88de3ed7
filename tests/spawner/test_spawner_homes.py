"""Each user's home is reached only through that user's EFS access point, which the spawner makes
before the first launch and names to the instance in a tag (docs/ARCHITECTURE.md §3, §8)."""

from __future__ import annotations

import asyncio

import pytest
from ec2spawner import payloads as req
from ec2spawner.aws import Aws
from ec2spawner.spawner import EC2Spawner
from jupyterhub.spawner import SpawnException


def tags_of(item: dict) -> dict:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


def hub_access_points(efs, efs_id: str, hub_id: str) -> list[dict]:
    return [ap for ap in efs.describe_access_points(FileSystemId=efs_id)["AccessPoints"]
            if tags_of(ap).get("ec2hub:hub") == hub_id]


@pytest.fixture
def sent(monkeypatch):
    """Every AWS operation the spawner sends, in order."""
    calls = []
    invoke = Aws._invoke

    def recording(self, service, operation, params):
        calls.append(operation)
        return invoke(self, service, operation, params)

    monkeypatch.setattr(Aws, "_invoke", recording)
    return calls


async def test_first_start_makes_the_users_access_point_and_later_starts_reuse_it(
        new_spawner, hub_id, live, efs, platform, sent):
    spawner = new_spawner("alice")
    await spawner.start()

    [access_point] = hub_access_points(efs, platform.efs_id, hub_id)
    uid = req.home_uid("jupyter-alice")
    assert 200000 <= uid < 1000000
    assert access_point["PosixUser"] == {"Uid": uid, "Gid": uid}
    assert access_point["RootDirectory"] == {
        "Path": "/home/jupyter-alice",
        "CreationInfo": {"OwnerUid": uid, "OwnerGid": uid, "Permissions": "0700"},
    }
    assert tags_of(access_point) == {"ec2hub:hub": hub_id, "ec2hub:unix-user": "jupyter-alice",
                                     "Name": f"ec2hub-{hub_id}-jupyter-alice"}
    [instance] = live("alice")
    assert tags_of(instance)["ec2hub:efs-access-point"] == access_point["AccessPointId"]
    # Before RunInstances: an instance never boots without its home's access point.
    assert sent.index("CreateAccessPoint") < sent.index("RunInstances")
    await spawner.stop()

    # The next start, and a new hub process (no memory of it), find it instead of making another.
    for forget in (False, True):
        if forget:
            EC2Spawner._access_points.clear()
        again = new_spawner("alice")
        await again.start()
        [instance] = live("alice")
        assert tags_of(instance)["ec2hub:efs-access-point"] == access_point["AccessPointId"]
        await again.stop()
    assert sent.count("CreateAccessPoint") == 1
    assert hub_access_points(efs, platform.efs_id, hub_id) == [access_point]


async def test_an_access_point_deleted_by_an_administrator_is_replaced_at_the_next_start(
        new_spawner, hub_id, live, efs, platform, sent, caplog):
    """The hub remembers each user's access point; one deleted behind its back is not named to
    the next instance (its home could not be mounted): a new one is made, with a token of its own."""
    spawner = new_spawner("dave")
    await spawner.start()
    [first] = hub_access_points(efs, platform.efs_id, hub_id)
    await spawner.stop()
    efs.delete_access_point(AccessPointId=first["AccessPointId"])

    again = new_spawner("dave")
    await again.start()
    [second] = hub_access_points(efs, platform.efs_id, hub_id)
    assert second["AccessPointId"] != first["AccessPointId"]
    [instance] = live("dave")
    assert tags_of(instance)["ec2hub:efs-access-point"] == second["AccessPointId"]
    assert second["ClientToken"] != first["ClientToken"]
    assert f"EFS access point {first['AccessPointId']} of jupyter-dave is gone from {platform.efs_id}: " \
           "making another" in caplog.text
    await again.stop()

    # While it exists, a start asks about the remembered one only: no listing, nothing made.
    made = sent.count("CreateAccessPoint")
    del sent[:]
    third = new_spawner("dave")
    await third.start()
    assert sent.count("DescribeAccessPoints") == 1 and sent.count("CreateAccessPoint") == 0
    assert sent.count("CreateAccessPoint") + made == 2
    await third.stop()


async def test_two_servers_of_one_user_starting_together_share_one_access_point(
        new_spawner, hub_id, live, efs, platform):
    """Both may miss it and both create it with the same ClientToken: EFS makes one and answers
    the other AccessPointAlreadyExists, after which that start finds it."""
    first, second = new_spawner("bob"), new_spawner("bob", server="gpu-work")
    await asyncio.gather(first.start(), second.start())

    [access_point] = hub_access_points(efs, platform.efs_id, hub_id)
    assert {tags_of(i)["ec2hub:efs-access-point"] for i in live("bob")} == {access_point["AccessPointId"]}
    await asyncio.gather(first.stop(), second.stop())


async def test_a_file_system_that_is_gone_fails_the_start_and_launches_nothing(
        new_spawner, live, hub_secrets, sent):
    spawner = new_spawner("carol", efs_id="fs-00000000000000dead")
    with pytest.raises(SpawnException) as failure:
        await spawner.start()

    assert failure.value.reason == "home"
    assert str(failure.value.message) == (
        "Your home directory cannot be reached: the file system fs-00000000000000dead refused "
        "(FileSystemNotFound). An administrator must check the hub's EFS (efs_id).")
    assert "RunInstances" not in sent and "PutParameter" not in sent
    assert live("carol") == [] and hub_secrets() == []


async def test_without_efs_no_access_point_is_made_and_no_efs_tag_is_set(new_spawner, live, sent):
    spawner = new_spawner("dave", efs_id=None)
    await spawner.start()

    [instance] = live("dave")
    assert not {"ec2hub:efs", "ec2hub:efs-access-point"} & set(tags_of(instance))
    assert not [op for op in sent if "AccessPoint" in op]
    await spawner.stop()
