"""Health probes against a real JupyterHub, proxy and ``jupyterhub-singleuser`` processes (issue 15).

The chaos lab (tests/chaos/chaos_lab.py) is the harness: its loopback "VPC" gives each instance a
127.x private IP on which a real single-user server runs, started and ended by the emulator's
instance events only, so a server killed here stays dead, as when its unit gave up restarting it.
The hub runs with short health settings (``HEALTH``); every wait is on a state or a log line with a
deadline.
"""

from __future__ import annotations

import resource
import signal
import sys
import time
from pathlib import Path

import pytest
import requests as http

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
from chaos_lab import Lab, wait_until  # the harness lives beside the chaos tests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

INTERVAL, TIMEOUT, WINDOW, FAILURES = 0.5, 1.0, 6.0, 3
HEALTH = f"""
c.EC2Spawner.health_interval = {INTERVAL}
c.EC2Spawner.health_timeout = {TIMEOUT}
c.EC2Spawner.health_window = {WINDOW}
c.EC2Spawner.health_failures = {FAILURES}
"""
# What may pass from the last failed probe's verdict to the hub reporting the server stopped:
# one probe interval, JupyterHub's poll_interval (2 s in the lab), the AWS calls, a loaded machine.
DETECTED_WITHIN = WINDOW + 30


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(tmp_path_factory.mktemp("health"), config=HEALTH) as lab:
        yield lab


def start_server(lab: Lab, user: str):
    assert lab.start(user), f"{user}'s server did not become ready:\n{lab.hub.log_tail()}"
    [instance] = lab.user_instances(user, ("running",))
    iid = instance["InstanceId"]
    proc = wait_until(lambda: lab.notebooks.servers.get(iid), 30, f"{user}'s server process")
    return iid, proc


def home_page(lab: Lab, user: str) -> str:
    browser = http.Session()
    browser.get(lab.proxy + "/hub/login", timeout=30)
    browser.post(lab.proxy + "/hub/login", data={"username": user, "password": "x",
                                                 "_xsrf": browser.cookies.get("_xsrf", "")}, timeout=30)
    reply = browser.get(lab.proxy + "/hub/home", timeout=30)
    reply.raise_for_status()
    return reply.text


def log_has(lab: Lab, text: str) -> bool:
    return text in lab.hub.log_of_this_start()


def ended(lab: Lab, user: str, iid: str) -> None:
    """The hub reports the server stopped; its instance is stopped (the lab's stop_mode) and its secret gone."""
    wait_until(lambda: lab.server(user) is None, DETECTED_WITHIN, f"the hub to report {user}'s server stopped")
    wait_until(lambda: lab.state_of(iid) == "stopped", 30, f"{iid} to be stopped")
    assert lab.prefix + iid not in lab.secrets()


def stopped_calls(lab: Lab) -> int:
    return lab.calls("StopInstances") + lab.calls("TerminateInstances")


def test_killed_server_is_ended_and_the_user_told_and_able_to_start_again(lab):
    user = "health-killed"
    iid, proc = start_server(lab, user)
    killed = time.monotonic()
    proc.kill()  # as when the unit gave up restarting it: nothing starts it again
    ended(lab, user, iid)
    assert time.monotonic() - killed < DETECTED_WITHIN
    assert log_has(lab, f"server on {iid} declared dead (connection to :{lab.ports['notebook']} refused")

    page = home_page(lab, user)
    assert "Your server stopped answering and was ended at" in page
    assert f"connection to :{lab.ports['notebook']} refused" in page

    # The next start resumes the kept instance, says why the last one ended, and clears the note.
    iid2, _ = start_server(lab, user)
    assert iid2 == iid
    assert log_has(lab, f"{user}: The last time: Your server stopped answering")
    assert "stopped answering" not in home_page(lab, user)
    lab.stop(user)


def test_hung_server_is_detected(lab):
    user = "health-hung"
    iid, proc = start_server(lab, user)
    proc.send_signal(signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
    try:
        ended(lab, user, iid)
        assert log_has(lab, f"server on {iid} declared dead (no answer on :{lab.ports['notebook']}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


def test_server_slow_for_less_than_the_window_is_kept(lab):
    user = "health-slow"
    iid, proc = start_server(lab, user)
    before = stopped_calls(lab)
    proc.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        wait_until(lambda: log_has(lab, f"ec2hub health: {iid} not answering"), 30, "a failed probe")
    finally:
        proc.send_signal(signal.SIGCONT)
    slow_for = time.monotonic() - paused
    assert slow_for < WINDOW, f"the server was paused {slow_for:.1f} s, not less than the window: inconclusive"
    wait_until(lambda: log_has(lab, f"ec2hub health: {iid} answers again"), 30, "the server to answer again")
    assert lab.server(user)["ready"]
    assert lab.state_of(iid) == "running"
    assert stopped_calls(lab) == before
    lab.stop(user)


def test_hub_side_failures_kill_nobody_and_a_dead_server_is_still_found(lab):
    users = ["health-side-a", "health-side-b", "health-side-c"]
    servers = {user: start_server(lab, user) for user in users}
    before = stopped_calls(lab)
    pid = lab.hub.proc.pid

    # 1. The hub cannot open sockets (no file descriptor left): every probe fails on its side.
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # Below the descriptors it holds (allowed): every new one fails with EMFILE, open ones still work.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, limits[1]))
    try:
        # Probes go on meanwhile (whatever the prober makes of them: a naive one counts failures).
        wait_until(lambda: log_has(lab, "failed on the hub's side") or any(
            log_has(lab, f"ec2hub health: {iid} not answering") for iid, _ in servers.values()), 30,
            "a probe during the failure")
        # Nothing must happen for longer than a verdict takes: this waits out the window on purpose.
        time.sleep(WINDOW + 2 * 2.0)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    # (AWS calls fail too while no descriptor is left: a wrong verdict shows in the log first.)
    assert not any(log_has(lab, f"server on {iid} declared dead") for iid, _ in servers.values())
    assert stopped_calls(lab) == before
    assert all(lab.server(user)["ready"] for user in users)
    assert log_has(lab, "failed on the hub's side")

    # 2. Every server stops answering at once: taken for the hub's own network, nobody is ended.
    for _, proc in servers.values():
        proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: log_has(lab, "servers fail their probes at once"), DETECTED_WITHIN,
                   "the verdicts to be held back")
        # That line may come once two of the three fail; "answers again" below follows only a
        # server's own failed probe, so each must have failed before it is resumed.
        for user, (iid, _) in servers.items():
            wait_until(lambda iid=iid: log_has(lab, f"ec2hub health: {iid} not answering"), DETECTED_WITHIN,
                       f"{user}'s failed probe")
    finally:
        for _, proc in servers.values():
            proc.send_signal(signal.SIGCONT)
    for user, (iid, _) in servers.items():
        wait_until(lambda iid=iid: log_has(lab, f"ec2hub health: {iid} answers again"), 30, f"{user} to answer")
    assert stopped_calls(lab) == before
    assert all(lab.server(user)["ready"] for user in users)

    # 3. One server really dies: it alone is ended.
    dead = users[0]
    dead_iid, dead_proc = servers[dead]
    dead_proc.kill()
    ended(lab, dead, dead_iid)
    for user in users[1:]:
        assert lab.server(user)["ready"]
        assert lab.state_of(servers[user][0]) == "running"
    for user in users[1:]:
        lab.stop(user)
