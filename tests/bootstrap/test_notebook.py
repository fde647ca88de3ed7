"""The notebook user data, run for real as root in an isolated host against IMDSv2, the AWS
emulator and a real JupyterHub."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
import subprocess

import pytest
from ec2spawner.payloads import home_uid

from infra.userdata import role_files, shipped_text
from sandbox.netns import http_get

from .conftest import (
    NOTEBOOK_USER_DATA,
    REPO,
    client,
    needs_root,
    notebook_tags,
    wait_until,
)

pytestmark = [needs_root, pytest.mark.slow, pytest.mark.timeout(900)]

SECRET_PREFIX = "/ec2hub/ec2hub-test/servers/"


def test_first_boot_script_is_shellcheck_clean():
    subprocess.run([str(REPO / ".venv/bin/shellcheck"), "-x", "--severity=style", "user-data.sh"],
                   cwd=REPO / "bootstrap/notebook", check=True)


def request_spawn(hub):
    """Ask the hub to start alice's server; it answers 201, or 202 after its 10 s slow-spawn wait,
    by when the client may have given up (the spawn goes on either way)."""
    with contextlib.suppress(TimeoutError):
        hub.api("POST", "/users/alice/server")


def snapshot(host) -> dict[str, bytes]:
    """The files the bootstrap owns, as the instance's disk holds them."""
    files = ["etc/passwd", "etc/group", "etc/shadow", "etc/ec2hub/singleuser.env"]
    return {f: (host.upper / f).read_bytes() for f in files}


def test_notebook_registers_with_hub_and_rerun_changes_nothing(aws, network, make_host, start_hub, efs_dir):
    iid = "i-0a1b2c3d4e5f60001"
    # Another user's home on the same file system, open to anyone who could reach it.
    bob_home = efs_dir / "home/jupyter-bob"
    bob_home.mkdir(parents=True)
    (bob_home / "notes.txt").write_text("bob's notes\n")
    os.chown(bob_home, home_uid("jupyter-bob"), home_uid("jupyter-bob"))
    bob_home.chmod(0o755)
    host = make_host(iid, "10.0.1.10", notebook_tags("alice"))
    host.start(NOTEBOOK_USER_DATA)  # what EC2 gets from infra: assembled from bootstrap/, gzip-compressed
    # The hub reaches the instance's :8888 the way it would across the VPC: here, a relay.
    to_notebook = network.relay(listen=("127.0.0.1", 0), connect=("10.0.1.10", 8888), connect_netns=host.netns)
    hub = start_hub(iid, f"http://127.0.0.1:{to_notebook.port}", SECRET_PREFIX)
    request_spawn(hub)

    hub.wait_ready(host)

    # The server answers on :8888 from the VPC bridge, under the user's prefix.
    status, body = http_get(network.vpc.netns, "http://10.0.1.10:8888/user/alice/api")
    assert status == 200 and "version" in json.loads(body)

    # The unix user exists inside the instance, not on this machine.
    assert host.exec(["id", "-un", "jupyter-alice"]).stdout.strip() == "jupyter-alice"
    with pytest.raises(KeyError):
        pwd.getpwnam("jupyter-alice")

    # The env file: root 0600, holding the token the spawner wrote; the token is never printed.
    token = json.loads(
        client(aws, "ssm").get_parameter(Name=SECRET_PREFIX + iid, WithDecryption=True)["Parameter"]["Value"]
    )["JUPYTERHUB_API_TOKEN"]
    env_file = host.upper / "etc/ec2hub/singleuser.env"
    st = env_file.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    assert f'JUPYTERHUB_API_TOKEN="{token}"' in env_file.read_text()
    assert token not in host.console_output

    # The home is on "EFS", the root of alice's access point: made by it (CreationInfo) with the
    # uid the access point enforces, which the instance's user has too.
    efs_home = efs_dir / "home/jupyter-alice"
    uid = int(host.exec(["id", "-u", "jupyter-alice"]).stdout)
    assert (uid, int(host.exec(["id", "-g", "jupyter-alice"]).stdout)) == (home_uid("jupyter-alice"),) * 2
    assert (efs_home.stat().st_uid, stat.S_IMODE(efs_home.stat().st_mode)) == (uid, 0o700)
    assert host.exec(["findmnt", "-n", "-o", "FSROOT", "/home/jupyter-alice"]).stdout.strip().endswith(
        "/efs/home/jupyter-alice")
    # Bob's home is on the same file system, and not reachable from alice's instance: not by
    # her server's user, not beyond her access point's root (..), not even by root.
    as_alice = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    for path in ("/home/jupyter-bob", "/home/jupyter-alice/../jupyter-bob"):
        listing = host.exec([*as_alice, "ls", "-a", path])
        assert listing.returncode != 0 and "notes.txt" not in listing.stdout, listing
    assert "jupyter-bob" not in host.exec([*as_alice, "ls", "-a", "/home/jupyter-alice/.."]).stdout
    reachable = host.exec(["grep", "-rls", "bob's notes", "/home", "/var/lib/ec2hub-sandbox-efs", "/mnt"])
    assert reachable.stdout == "", reachable.stdout
    # Without its access point the file system refuses a mount (the policy), even to root.
    whole = host.exec(["mount", "-t", "efs", "-o", "tls,iam", "fs-0123456789abcdef0:/", "/mnt"])
    assert whole.returncode != 0 and "access denied" in whole.stderr, whole
    ps = host.exec(["ps", "-o", "user=,args=", "-C", "jupyterhub-singleuser", "-C", "python3"]).stdout
    assert any(line.startswith("jupyter") and "jupyterhub-singleuser" in line for line in ps.splitlines()), ps

    # Stopped and started: cloud-init does not run the user data again (same instance id); the
    # enabled unit's every-start step and the fstab home bring the server back, changing nothing.
    before = snapshot(host)
    host.restart()
    host.wait_for_boot()
    wait_until(lambda: _answers(network, "http://10.0.1.10:8888/user/alice/api"), 90, "server back after restart")
    second = host.journal("ec2hub-singleuser.service", this_boot=True)
    assert snapshot(host) == before
    assert "singleuser.env unchanged" in second, second
    assert "ERROR" not in second and token not in second and token not in host.console_output
    assert host.console_output.count("ec2hub-notebook: start:") == 1
    assert hub.api("GET", "/users/alice")["servers"][""]["ready"]

    # The instance runs the repository's files (its modules without docstrings and comments).
    for path in role_files("notebook"):
        assert (host.upper / "opt/ec2hub/bootstrap" / path).read_text() == shipped_text(path)


def server_env(host) -> dict[str, str]:
    """The environment of the running jupyterhub-singleuser, as the kernel holds it."""
    pid = host.exec(["pgrep", "-f", "-o", "jupyterhub-singleuser"]).stdout.strip()
    raw = host.exec(["cat", f"/proc/{pid}/environ"], check=True).stdout
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_a_resumed_server_uses_the_secret_written_before_its_start(aws, network, make_host, start_hub):
    """Stop, new secret, start: the every-start step (run again before the server) reads the new
    token, and the hub accepts the server with it."""
    iid = "i-0a1b2c3d4e5f60003"
    host = make_host(iid, "10.0.1.12", notebook_tags("alice"))
    host.start(NOTEBOOK_USER_DATA)
    to_notebook = network.relay(listen=("127.0.0.1", 0), connect=("10.0.1.12", 8888), connect_netns=host.netns)
    hub = start_hub(iid, f"http://127.0.0.1:{to_notebook.port}", SECRET_PREFIX)
    request_spawn(hub)
    hub.wait_ready(host)
    ssm = client(aws, "ssm")

    def secret_token():
        value = ssm.get_parameter(Name=SECRET_PREFIX + iid, WithDecryption=True)["Parameter"]["Value"]
        return json.loads(value)["JUPYTERHUB_API_TOKEN"]

    first = secret_token()
    assert server_env(host)["JUPYTERHUB_API_TOKEN"] == first

    # The spawner's resume: the instance stops, a new spawn writes a new secret, the instance starts.
    hub.api("DELETE", "/users/alice/server")
    wait_until(lambda: "" not in hub.api("GET", "/users/alice")["servers"], 60, "alice stopped")
    host.stop()
    request_spawn(hub)
    wait_until(lambda: secret_token() != first, 30, "the spawner's new secret")
    second = secret_token()
    host.start()
    hub.wait_ready(host)
    assert server_env(host)["JUPYTERHUB_API_TOKEN"] == second
    assert f'JUPYTERHUB_API_TOKEN="{second}"' in (host.upper / "etc/ec2hub/singleuser.env").read_text()
    boot = host.journal("ec2hub-singleuser.service", this_boot=True)
    assert "singleuser.env written" in boot and second not in boot and "ERROR" not in boot, boot
    assert second not in host.console_output


def _answers(network, url) -> bool:
    try:
        return http_get(network.vpc.netns, url)[0] == 200
    except OSError:
        return False


def test_without_efs_the_home_is_local_and_the_log_says_so(aws, network, make_host):
    iid = "i-0a1b2c3d4e5f60002"
    client(aws, "ssm").put_parameter(
        Name=SECRET_PREFIX + iid, Value=json.dumps({"JUPYTERHUB_API_TOKEN": "t"}), Type="SecureString", Overwrite=True
    )
    host = make_host(iid, "10.0.1.11", notebook_tags("bob", efs=None), efs=False)
    host.start(NOTEBOOK_USER_DATA)
    assert host.wait_for_user_data() == 0, host.logs
    assert host.console_output.count("no ec2hub:efs tag") == 1
    home = host.upper / "home/jupyter-bob"
    assert home.is_dir() and home.stat().st_uid == int(host.exec(["id", "-u", "jupyter-bob"]).stdout)
    assert host.exec(["mountpoint", "-q", "/mnt/efs"]).returncode != 0
