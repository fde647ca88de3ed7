"""The platform end to end over REST, through the real proxy: every class, persistence, hub restart,
hostile user names. Each test cleans up its servers and asserts nothing is left in the emulator."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from e2e_hub import REPO, Hub, Instance
from waiting import wait_until

CLASSES = ["small", "large-cpu", "gpu"]
# What today's units score in `systemd-analyze security` (docs/PERFORMANCE.md): no more exposed.
EXPOSURE_MAX = {"ec2hub-singleuser.service": 3.4, "ec2hub-hub.service": 3.2}
PWNED_CHECK = """
import os
places = ["/", "/root", "/tmp", "/var/lib/cloud/instance", "/etc/ec2hub", os.path.expanduser("~"), "/home"]
found = []
for place in places:
    try:
        found += [os.path.join(place, n) for n in os.listdir(place) if "pwned" in n]
    except OSError:
        pass
print(sorted(set(found)))
"""


@pytest.mark.parametrize("slug", CLASSES)
def test_each_class_starts_runs_code_and_terminates(hub: Hub, slug):
    user = f"e2e-{slug}"
    hub.create_user(user)
    hub.start(user, {"instance_class": slug})

    [instance] = hub.instances(user, states=("running",))
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["ec2hub:class"] == slug
    secret = hub.secret_prefix() + instance["InstanceId"]
    assert hub.secret_exists(secret)

    status, info = hub.server_api(user, "GET", "/status")
    assert status == 200 and "started" in info, (status, info)
    output = hub.run_code(user, "import os, socket; print(os.environ['JUPYTERHUB_USER'], socket.gethostname())")
    name, hostname = output.split()
    assert name == user
    assert hostname == "ip-" + instance["PrivateIpAddress"].replace(".", "-"), "the kernel runs on the instance"
    # The GPU class's server sees the instance's GPU device nodes (a unit with PrivateDevices=yes
    # would hide them and CUDA would find no device); the CPU classes have none.
    devices = hub.run_code(user, "import os; print(sorted(d for d in os.listdir('/dev') if d.startswith('nvidia')))")
    assert devices.strip() == ("['nvidia-modeset', 'nvidia0', 'nvidiactl']" if slug == "gpu" else "[]"), devices

    hub.stop(user)
    state = wait_until(lambda: hub.instance(instance["InstanceId"])["State"]["Name"] == "terminated",
                       60, "the instance was not terminated")
    assert state
    assert not hub.secret_exists(secret), "the server's secret outlived it"


REACH_OTHER_HOME = """
import os
home = os.path.expanduser("~")
for path in ("/home/jupyter-e2e-other", os.path.join(home, "..", "jupyter-e2e-other")):
    try:
        print(path, os.listdir(path))
    except OSError as error:
        print(path, type(error).__name__)
print("home", sorted(os.listdir(os.path.join(home, ".."))))
"""


def test_files_in_the_home_survive_a_new_instance(hub: Hub):
    user = "e2e-persist"
    hub.create_user(user)
    hub.start(user)
    [first] = hub.instances(user, states=("running",))
    # Another user's home on the same file system, readable by anyone who could reach it: the
    # server's user cannot, its instance mounts only its own user's access point (ARCHITECTURE §8).
    efs_id = {t["Key"]: t["Value"] for t in first["Tags"]}["ec2hub:efs"]
    other = REPO / ".sandbox/efs" / efs_id / "home/jupyter-e2e-other"
    other.mkdir(parents=True, exist_ok=True)
    other.chmod(0o755)
    (other / "notes.txt").write_text("not yours\n")
    lines = hub.run_code(user, REACH_OTHER_HOME).splitlines()
    assert [line.split()[-1] for line in lines[:2]] == ["FileNotFoundError", "FileNotFoundError"], lines
    assert "jupyter-e2e-other" not in lines[2], lines
    status, _ = hub.server_api(user, "PUT", "/contents/keep.txt",
                               {"type": "file", "format": "text", "content": "still here"})
    assert status in (200, 201)
    hub.stop(user)

    hub.start(user)
    [second] = hub.instances(user, states=("running",))
    assert second["InstanceId"] != first["InstanceId"]
    status, model = hub.server_api(user, "GET", "/contents/keep.txt?content=1")
    assert status == 200 and model["content"] == "still here"
    hub.stop(user)


def test_hub_restart_keeps_running_servers_without_new_instances(hub: Hub):
    users = ["e2e-restart-a", "e2e-restart-b"]
    for user in users:
        hub.create_user(user)
        hub.start(user)
    before = {i["InstanceId"] for i in hub.all_notebook_instances()}

    hub_id = hub.env["hub_instance_id"]
    hub.ec2.stop_instances(InstanceIds=[hub_id])
    wait_until(lambda: hub.instance(hub_id)["State"]["Name"] == "stopped", 60, "the hub did not stop")
    hub.ec2.start_instances(InstanceIds=[hub_id])
    # EC2 says "stopped" at once here; the instance's own shutdown (systemctl poweroff) and its
    # next boot follow: wait for that boot before asking the hub, or the old hub still answers.
    hub_instance = Instance(hub_id)
    wait_until(lambda: hub_instance.boots >= 2, 120, "the hub instance did not boot again")

    def hub_answers():
        try:
            return hub.api("GET", "/")[0] == 200
        except OSError:
            return False

    wait_until(hub_answers, 180, "the hub did not come back")
    # It came back by systemd alone: cloud-init ran the hub's user data at the first boot only.
    assert hub_instance.console.count("ec2hub-hub: start:") == 1, hub_instance.console
    def reachable(user: str) -> bool:
        return hub.server_api(user, "GET", "/status")[0] == 200

    for user in users:
        model = wait_until(partial(hub.server_model, user), 60, f"{user}'s server is gone after the restart")
        assert model["ready"]
        assert wait_until(partial(reachable, user), 60,
                          f"{user}'s server is not reachable through the proxy after the restart")
    after = {i["InstanceId"] for i in hub.all_notebook_instances()}
    assert after == before, "the restart launched or lost instances"
    for user in users:
        hub.stop(user)
    assert not any(hub.instances(u) for u in users), "instances left behind"


@pytest.mark.parametrize(
    "user",
    [
        # NativeAuthenticator refuses spaces, commas and slashes in names; ${IFS} stands for a space.
        "o'brien\"$(touch${IFS}e2e-pwned)`touch${IFS}e2e-pwned`;touch${IFS}e2e-pwned",
        "zoë-日本語-ünïcode",
        "x" * 110,
    ],
    ids=["quotes-and-substitutions", "unicode", "110-characters"],
)
def test_hostile_user_names_spawn_and_inject_nothing(hub: Hub, user):
    hub.create_user(user)
    hub.start(user)
    status, _ = hub.server_api(user, "GET", "/status")
    assert status == 200
    # Wherever an injected command would have run (the user data's working directory, root's
    # home, the user's home, /tmp), there is no file it made.
    output = hub.run_code(user, PWNED_CHECK)
    assert output.strip() == "[]", output
    [instance] = hub.instances(user, states=("running",))
    assert instance
    hub.stop(user)
    assert not (Path.cwd() / "e2e-pwned").exists() and not Path("/e2e-pwned").exists()


def sandbox_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_injected_capacity_shortage_falls_back_to_the_next_type_and_status_lists_it(hub: Hub):
    """`python -m sandbox inject capacity` takes g5.xlarge away in every AZ: the GPU class comes up
    on its fallback type, and `python -m sandbox status` shows the instance with its class and user."""
    subnets = hub.ec2.describe_subnets(Filters=[{"Name": "tag:aws-cdk:subnet-type", "Values": ["Private"]}])["Subnets"]
    azs = sorted({s["AvailabilityZone"] for s in subnets}) or ["us-east-1a", "us-east-1b"]
    for az in azs:
        sandbox_cli("inject", "capacity", "--az", az, "--type", "g5.xlarge")
    user = "e2e-fallback"
    try:
        hub.create_user(user)
        hub.start(user, {"instance_class": "gpu"})
        [instance] = hub.instances(user, states=("running",))
        assert instance["InstanceType"] == "g6.xlarge"
        listing = sandbox_cli("status")
        row = next(line for line in listing.splitlines() if line.startswith(instance["InstanceId"]))
        fields = row.split()
        assert fields[1:4] == ["running", "g6.xlarge", "gpu"] and fields[5] == user, row  # EC2's facts, its tag
        # The hub's view of who owns it, and what the sweeper would do with it.
        assert f"{user} (ready)" in row and row.endswith("keep: owned"), row
    finally:
        sandbox_cli("inject", "clear")
    hub.stop(user)


def test_a_rebooted_notebook_comes_back_by_systemd_alone_and_the_units_run_hardened(hub: Hub):
    """RebootInstances: the instance's systemd reboots it; cloud-init does not run the user data
    again (same instance id), the enabled unit brings the server back. Both units run for real."""
    user = "e2e-reboot"
    hub.create_user(user)
    hub.start(user)
    [instance] = hub.instances(user, states=("running",))
    notebook = Instance(instance["InstanceId"])
    for box, unit in ((notebook, "ec2hub-singleuser.service"), (Instance(hub.env["hub_instance_id"]), "ec2hub-hub.service")):
        props = box.unit(unit)
        assert (props["ActiveState"], props["SubState"], props["UnitFileState"]) == ("active", "running", "enabled")
        assert (props["NoNewPrivileges"], props["ProtectSystem"], props["PrivateTmp"]) == ("yes", "strict", "yes")
        assert props["User"] not in ("", "root"), props["User"]
        assert box.exposure(unit) <= EXPOSURE_MAX[unit], unit
    first_pid = notebook.unit("ec2hub-singleuser.service")["MainPID"]

    hub.ec2.reboot_instances(InstanceIds=[instance["InstanceId"]])
    wait_until(lambda: notebook.boots == 2, 60, "the instance did not reboot")

    def back() -> bool:
        try:
            return notebook.unit("ec2hub-singleuser.service")["SubState"] == "running" and \
                hub.server_api(user, "GET", "/status")[0] == 200
        except (AssertionError, OSError, KeyError):
            return False

    wait_until(back, 120, "the server did not come back after the reboot")
    assert notebook.unit("ec2hub-singleuser.service")["MainPID"] != first_pid
    assert notebook.console.count("ec2hub-notebook: start:") == 1, notebook.console
    assert hub.run_code(user, "print(6 * 7)").strip() == "42"
    hub.stop(user)
