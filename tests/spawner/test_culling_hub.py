"""Idle by activity and per-class limits, through a real JupyterHub, proxy and ``jupyterhub-singleuser``
processes (issue 12).

The chaos lab (tests/chaos/chaos_lab.py) runs the hub against the emulator and one real server per
instance on its own loopback address. Beside each server the test runs the instance's activity
agent (``ec2hub_bootstrap.activity``) on that server's env, as ``ec2hub-activity.service`` does on
the instance. Limits are seconds, set through the configuration; every wait is on a state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
from chaos_lab import (  # the harness lives beside the chaos tests
    BIN,
    REPO,
    Lab,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# max_age counts from the spawn request (JupyterHub's `started`): longer than a start here.
IDLE_S, MAX_AGE_S = 12, 25
LIMITS = f"""
base = c.EC2Spawner.classes[0]
c.EC2Spawner.classes = [
    dict(base, idle_timeout={IDLE_S}),
    dict(base, slug="capped", display_name="Capped", default=False, max_age={MAX_AGE_S}),
]
c.EC2Spawner.cull_interval = 0.5
c.EC2Spawner.activity_interval = 1
"""
# What may pass between a limit and the hub reporting the server stopped on a loaded machine.
ENDED_WITHIN = 90


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(tmp_path_factory.mktemp("culling"), config=LIMITS) as lab:
        yield lab


@pytest.fixture
def agents(lab):
    procs = []

    def start(user: str) -> tuple[str, dict]:
        """The activity agent of ``user``'s instance, on the env its server got; (instance id, env)."""
        [instance] = lab.user_instances(user, ("running",))
        iid = instance["InstanceId"]
        env = json.loads(lab.ssm.get_parameter(Name=lab.prefix + iid, WithDecryption=True)["Parameter"]["Value"])
        env["JUPYTERHUB_SERVICE_URL"] = env["JUPYTERHUB_SERVICE_URL"].replace("0.0.0.0", instance["PrivateIpAddress"])
        # This machine's CPUs are shared with everything else running: only the server's signals count here.
        env["EC2HUB_BUSY_CPUS"] = "1000"
        home = lab.workdir / "instances" / iid
        env_file = home / "singleuser.env"
        env_file.write_text("".join(f'{k}="{v}"\n' for k, v in env.items()))
        log = open(home / "activity.log", "w")  # noqa: SIM115 (the process owns it)
        procs.append(subprocess.Popen(
            [str(BIN / "python"), "-m", "ec2hub_bootstrap.activity", "run"], stdout=log, stderr=subprocess.STDOUT,
            env={"PATH": str(BIN), "PYTHONPATH": str(REPO / "bootstrap"), "EC2HUB_ENV_FILE": str(env_file)}))
        log.close()
        return iid, env

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def run_forever_in_a_kernel(lab: Lab, user: str, iid: str) -> tuple[str, BlockingKernelClient]:
    """Start a kernel through the proxy and run a cell that prints nothing for ten minutes."""
    reply = lab.session.post(f"{lab.proxy}/user/{user}/api/kernels", json={}, timeout=30)
    reply.raise_for_status()
    kernel_id = reply.json()["id"]
    connection = lab.workdir / "instances" / iid / "runtime" / f"kernel-{kernel_id}.json"
    wait_until(connection.exists, 30, "the kernel's connection file")

    def in_state(state: str):
        kernels = lab.session.get(f"{lab.proxy}/user/{user}/api/kernels", timeout=30).json()
        return [k for k in kernels if k["id"] == kernel_id and k["execution_state"] == state]

    # No wait_for_ready: on a client that does not own the kernel it takes a heartbeat not yet
    # beating on a loaded machine for a dead kernel. The request waits in the shell socket until
    # the kernel reads it; the server's own view says when it runs.
    client = BlockingKernelClient(connection_file=str(connection))
    client.load_connection_file()
    client.start_channels()

    # The server learns the kernel's state from IOPub, a publish/subscribe socket: what the kernel
    # publishes before the server's subscription is through is lost. Sent too early, the cell's
    # "busy" can be, and the server then says "starting" for the whole cell. So first make the
    # kernel publish statuses (each kernel_info request: busy, then idle) until the server has
    # heard one and calls the kernel idle; from then on it hears the cell's "busy".
    def server_hears_the_kernel():
        client.kernel_info()
        return in_state("idle")

    wait_until(server_hears_the_kernel, 60, "the server to hear the kernel's status", interval=1)
    client.execute("import time; time.sleep(600)")
    wait_until(lambda: in_state("busy"), 60, "the kernel to be busy")
    return kernel_id, client


def started_and_last_activity(lab: Lab, user: str) -> tuple[str, str]:
    server = lab.server(user)
    return server["started"], server["last_activity"]


def test_busy_kernel_without_a_browser_outlives_idle_timeout_and_an_idle_server_does_not(lab, agents):
    busy, idle = "cull-busy", "cull-idle"
    assert lab.start(busy), lab.hub.log_tail()
    busy_iid, _ = agents(busy)
    kernel_id, client = run_forever_in_a_kernel(lab, busy, busy_iid)
    assert lab.start(idle), lab.hub.log_tail()
    agents(idle)
    try:
        # The idle server (an agent beside it too) is stopped at its class's idle_timeout ...
        wait_until(lambda: lab.server(idle) is None, ENDED_WITHIN, "the idle server to be stopped")
        assert f"ec2hub culler: stopping {idle}" in lab.hub.log_of_this_start()
        # ... while the busy one, started before it, is still there: its agent reports the busy kernel.
        assert lab.server(busy)["ready"]
        assert f"ec2hub culler: stopping {busy}" not in lab.hub.log_of_this_start()
        started, last_activity = started_and_last_activity(lab, busy)
        assert last_activity > started
        reported = last_activity
        wait_until(lambda: started_and_last_activity(lab, busy)[1] > reported, 30, "the agent's next report")

        # The cell ends (interrupted): nothing is busy any more, and the server is stopped as idle.
        lab.session.post(f"{lab.proxy}/user/{busy}/api/kernels/{kernel_id}/interrupt", timeout=30).raise_for_status()
        wait_until(lambda: lab.server(busy) is None, ENDED_WITHIN, "the no longer busy server to be stopped")
        log = lab.hub.log_of_this_start()
        assert f"ec2hub culler: stopping {busy}" in log and f"past its idle_timeout of {IDLE_S} s" in log
    finally:
        client.stop_channels()


def test_class_max_age_ends_a_server(lab, agents):
    """The class sets no idle_timeout (the hub's hour applies): only its max_age can end the server."""
    user = "cull-capped"
    lab.create_user(user)
    reply = lab.api("POST", f"/users/{user}/server", json={"user_options": {"instance_class": "capped"}})
    assert reply.status_code in (201, 202), reply.text
    assert lab.settle(user), lab.hub.log_tail()
    agents(user)
    wait_until(lambda: lab.server(user) is None, ENDED_WITHIN, "the capped server to be stopped")
    assert f"past its max_age of {MAX_AGE_S} s" in lab.hub.log_of_this_start()
