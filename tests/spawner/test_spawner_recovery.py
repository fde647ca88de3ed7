"""EC2Spawner when things go wrong: resumes, adoptions after a hub crash, failures right after a
launch, cancellation while RunInstances is in flight, throttling without end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time

import botocore.exceptions
import pytest
from ec2spawner.aws import Aws
from jupyterhub.spawner import SpawnException
from waiting import until

NEW_TOKEN = "tok-" + "n3wer" * 7


def client_error(code: str, operation: str, message: str = "injected"):
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": message}}, operation)


@pytest.fixture
def calls(monkeypatch):
    """Every AWS operation sent through the seam, in order, as (operation, params)."""
    sent = []
    invoke = Aws._invoke

    def recording(self, service, operation, params):
        sent.append((operation, params))
        return invoke(self, service, operation, params)

    monkeypatch.setattr(Aws, "_invoke", recording)
    return sent


def inject(monkeypatch, fault):
    """Run ``fault(operation, params)`` before each AWS call; it may raise or block."""
    invoke = Aws._invoke

    def faulty(self, service, operation, params):
        fault(operation, params)
        return invoke(self, service, operation, params)

    monkeypatch.setattr(Aws, "_invoke", faulty)


def secret_token(ssm, spawner, iid):
    name = f"{spawner.secret_prefix}{iid}"
    return json.loads(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])["JUPYTERHUB_API_TOKEN"]


async def stopped_and_kept(new_spawner) -> tuple[str, dict]:
    """A server started and stopped with stop_mode=stop; the state the hub saves afterwards."""
    first = new_spawner(stop_mode="stop")
    await first.start()
    iid = first.instance_id
    await first.stop()
    first.clear_state()  # what JupyterHub's User.stop does before saving the state
    return iid, first.get_state()


def state_of(ec2, iid):
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


# -- scenario 4: the token a server holds is the token the hub has ------------------------------

async def test_resume_writes_the_new_secret_before_start_instances(new_spawner, emu, ssm, calls):
    iid, state = await stopped_and_kept(new_spawner)
    assert state == {"kept_instance_id": iid}  # the hub database names the kept instance
    again = new_spawner(stop_mode="stop", api_token=NEW_TOKEN)
    again.load_state(state)
    del calls[:]
    await again.start()
    ops = [op for op, _ in calls]
    assert again.instance_id == iid
    assert ops.index("PutParameter") < ops.index("StartInstances")
    assert secret_token(ssm, again, iid) == NEW_TOKEN


async def test_adopted_running_instance_is_restarted_to_read_the_new_token(new_spawner, emu, ssm, calls):
    first = new_spawner()
    await first.start()  # running, its server has read TOKEN; then the hub dies and restarts
    iid = first.instance_id
    after = emu.events()[-1]["seq"]
    again = new_spawner(api_token=NEW_TOKEN)  # the user starts again: a new token
    del calls[:]
    await again.start()
    ops = [op for op, _ in calls]
    last_write = len(ops) - 1 - ops[::-1].index("PutParameter")
    assert again.instance_id == iid
    assert last_write < ops.index("StopInstances") < ops.index("StartInstances")
    assert [e["state"] for e in emu.events(after) if e["instance_id"] == iid] == ["stopped", "running"]
    assert secret_token(ssm, again, iid) == NEW_TOKEN
    assert any("so that it reads its new token" in e["message"] for e in again._events)


# -- scenario 5: resume failures keep the disk ---------------------------------------------------

async def test_resume_without_capacity_keeps_the_instance_and_says_why(new_spawner, emu, ec2, monkeypatch, hub_secrets):
    iid, state = await stopped_and_kept(new_spawner)

    def no_capacity(operation, params):
        if operation == "StartInstances":
            raise client_error("InsufficientInstanceCapacity", operation)

    inject(monkeypatch, no_capacity)
    again = new_spawner(stop_mode="stop")
    again.load_state(state)
    with pytest.raises(SpawnException) as info:
        await again.start()
    assert (info.value.reason, info.value.status_code) == ("capacity", 503)
    assert info.value.message == (
        "EC2 has no t3.medium capacity in us-east-1a to start your stopped server again right now "
        "(InsufficientInstanceCapacity). Its disk is kept: try later or another class.")
    assert state_of(ec2, iid) == "stopped"
    assert hub_secrets() == []
    again.clear_state()
    assert again.get_state() == {"kept_instance_id": iid}  # still owned, resumed next time


async def test_lagging_stopped_answer_after_start_instances_is_not_a_failure(new_spawner, emu, monkeypatch, live):
    iid, state = await stopped_and_kept(new_spawner)
    started = threading.Event()
    lagging = {"left": 3}  # the next three describes after StartInstances still say "stopped"
    invoke, describe = Aws._invoke, Aws._describe_all_sync

    def recording(self, service, operation, params):
        if operation == "StartInstances":
            started.set()
        return invoke(self, service, operation, params)

    def lagging_describe(self, filters):
        views = describe(self, filters)
        if started.is_set() and lagging["left"] > 0 and iid in views:
            lagging["left"] -= 1
            views[iid] = dataclasses.replace(views[iid], state="stopped")
        return views

    monkeypatch.setattr(Aws, "_invoke", recording)
    monkeypatch.setattr(Aws, "_describe_all_sync", lagging_describe)
    again = new_spawner(stop_mode="stop")
    again.load_state(state)
    await again.start()
    assert lagging["left"] == 0
    assert again.instance_id == iid
    assert [(i["InstanceId"], i["State"]["Name"]) for i in live()] == [(iid, "running")]


async def test_resume_timing_out_stops_and_keeps_the_instance(new_spawner, emu, ec2, hub_secrets):
    iid, state = await stopped_and_kept(new_spawner)
    emu.set_timing(pending_s=30)
    again = new_spawner(stop_mode="stop", start_timeout=1)
    again.load_state(state)
    with pytest.raises(asyncio.TimeoutError):
        await again.start()
    assert state_of(ec2, iid) in ("stopping", "stopped")
    assert hub_secrets() == []
    assert again.kept_instance_id == iid and again.instance_id is None


# -- scenario 6: NotFound right after a launch means "not listed yet" ---------------------------

async def test_not_found_right_after_launch_is_retried_not_taken_as_gone(new_spawner, emu, monkeypatch, live,
                                                                         hub_secrets, caplog):
    terminate_calls = []

    def fault(operation, params):
        if operation == "PutParameter":  # the start fails right after RunInstances
            raise client_error("InternalServerError", operation)
        if operation == "TerminateInstances":
            terminate_calls.append(params["InstanceIds"])
            if len(terminate_calls) <= 2:  # EC2 does not list the new instance yet
                raise client_error("InvalidInstanceID.NotFound", operation)

    inject(monkeypatch, fault)
    caplog.set_level(logging.INFO)
    spawner = new_spawner()
    with pytest.raises(SpawnException):
        await spawner.start()
    assert len(terminate_calls) == 3
    assert live() == [] and hub_secrets() == []
    assert f"cleaned up {terminate_calls[0][0]} after a failed start" in caplog.text


async def test_a_launch_never_listed_is_not_logged_as_cleaned_up(new_spawner, emu, monkeypatch, caplog):
    def fault(operation, params):
        if operation == "PutParameter":
            raise client_error("InternalServerError", operation)
        if operation == "TerminateInstances":
            raise client_error("InvalidInstanceID.NotFound", operation)

    inject(monkeypatch, fault)
    caplog.set_level(logging.INFO)
    spawner = new_spawner(launch_visibility_grace=0.5)
    with pytest.raises(SpawnException):
        await spawner.start()
    assert "cleaned up" not in caplog.text
    assert "not listed by EC2 after 0 s; the sweeper will end it" in caplog.text


# -- scenario 7: cancel, start_timeout or hub shutdown while RunInstances is in flight -------------

@pytest.mark.parametrize("how", ["cancelled", "start_timeout"])
async def test_cancel_while_run_instances_is_in_flight_leaves_nothing(new_spawner, emu, monkeypatch, live,
                                                                      hub_secrets, how):
    in_flight, release, answered = threading.Event(), threading.Event(), threading.Event()
    invoke = Aws._invoke

    def slow_launch(self, service, operation, params):
        if operation != "RunInstances":
            return invoke(self, service, operation, params)
        in_flight.set()
        release.wait(10)  # EC2 answers only after the spawn was given up
        try:
            return invoke(self, service, operation, params)
        finally:
            answered.set()

    monkeypatch.setattr(Aws, "_invoke", slow_launch)
    spawner = new_spawner()
    if how == "cancelled":
        task = asyncio.create_task(spawner.start())
    else:  # JupyterHub's asyncio.wait_for(start(), start_timeout)
        task = asyncio.create_task(asyncio.wait_for(spawner.start(), timeout=0.5))
    await until(in_flight.is_set, what="RunInstances in flight")
    if how == "cancelled":
        task.cancel()
    await until(lambda: any(e["message"].startswith("Start failed") for e in spawner._events),
                what="the start to fail")
    release.set()
    with pytest.raises((asyncio.CancelledError, asyncio.TimeoutError)):
        await task
    # What JupyterHub does next (the DELETE of a pending spawn, or User.spawn after its timeout):
    # stop(), which waits for the cleanup the cancelled start left running.
    await spawner.stop()
    assert answered.wait(10)  # the launch happened: the instance exists unless the cleanup ended it
    assert live() == [] and hub_secrets() == []
    assert spawner.instance_id is None


# -- scenario 8: the RunInstances throttle retry has a deadline ----------------------------------

async def test_throttled_run_instances_gives_up_at_start_timeout(new_spawner, emu, monkeypatch, live):
    attempts = []

    def throttled(operation, params):
        if operation == "RunInstances":
            attempts.append(time.monotonic())
            raise client_error("RequestLimitExceeded", operation)

    inject(monkeypatch, throttled)
    spawner = new_spawner(start_timeout=3)
    started = time.monotonic()
    with pytest.raises(SpawnException) as info:
        await asyncio.wait_for(spawner.start(), timeout=30)
    assert info.value.reason == "throttled"
    assert time.monotonic() - started < 3 + 1
    assert len(attempts) >= 2 and live() == []


# -- scenario 8: renamed users and servers keep their instances ---------------------------------

def tags_of(ec2, iid):
    instance = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in instance["Tags"]}


async def test_renamed_server_keeps_its_instance_under_the_new_name(new_spawner, emu, ec2, hub_id):
    first = new_spawner(server="old", stop_mode="stop")
    await first.start()
    iid = first.instance_id
    await first.stop()
    first.clear_state()
    await first.rename("old", "new")  # JupyterHub 6: PATCH /users/alice/servers/old {"name": "new"}
    tags = tags_of(ec2, iid)
    assert (tags["ec2hub:user"], tags["ec2hub:server"], tags["Name"]) == ("alice", "new", f"ec2hub-{hub_id}-alice-new")
    renamed = new_spawner(server="new", stop_mode="stop")
    renamed.load_state(first.get_state())
    await renamed.start()
    assert renamed.instance_id == iid


async def test_renamed_user_resumes_its_kept_instance_and_retags_it(new_spawner, emu, ec2, hub_id):
    # JupyterHub 6.1.1 renames a user without any spawner hook: the saved state still names the
    # kept instance, and its tags follow at the next start.
    iid, state = await stopped_and_kept(new_spawner)
    renamed = new_spawner("alicia", stop_mode="stop")
    renamed.load_state(state)
    await renamed.start()
    assert renamed.instance_id == iid
    tags = tags_of(ec2, iid)
    assert (tags["ec2hub:user"], tags["ec2hub:server"], tags["Name"]) == ("alicia", "", f"ec2hub-{hub_id}-alicia")


async def test_resume_failing_before_start_instances_still_keeps_the_instance(new_spawner, emu, ec2, monkeypatch):
    iid, state = await stopped_and_kept(new_spawner)

    def tags_refused(operation, params):
        if operation == "CreateTags":
            raise client_error("InternalError", operation)

    inject(monkeypatch, tags_refused)
    renamed = new_spawner("alicia", stop_mode="stop")  # its kept instance must be retagged first
    renamed.load_state(state)
    with pytest.raises(SpawnException):
        await renamed.start()
    assert state_of(ec2, iid) == "stopped"
    assert renamed.kept_instance_id == iid
