"""The notebook user data, run for real as root in an isolated host against IMDSv2, the AWS
emulator and a real JupyterHub."""

from __future__ import annotations

import gzip
import json
import pwd
import stat
import subprocess

import pytest

from sandbox.netns import http_get

from .conftest import (
    NOTEBOOK_USER_DATA,
    REPO,
    client,
    needs_root,
    notebook_tags,
    wait_until,
)

pytestmark = [needs_root, pytest.mark.slow]

SECRET_PREFIX = "/ec2hub/ec2hub-test/servers/"


def test_user_data_is_shellcheck_clean():
    subprocess.run([str(REPO / ".venv/bin/shellcheck"), "--severity=style", str(NOTEBOOK_USER_DATA)], check=True)


def snapshot(host) -> dict[str, bytes]:
    """The files the bootstrap owns, as the instance's disk holds them."""
    files = ["etc/passwd", "etc/group", "etc/shadow", "etc/ec2hub/singleuser.env"]
    return {f: (host.upper / f).read_bytes() for f in files}


def test_notebook_registers_with_hub_and_rerun_changes_nothing(aws, network, make_host, start_hub):
    iid = "i-0a1b2c3d4e5f60001"
    host = make_host(iid, "10.0.1.10", notebook_tags("alice"))
    # What EC2 gets: the script is over the 16 KB raw limit, so infra sends it gzip-compressed.
    host.start(gzip.compress(NOTEBOOK_USER_DATA.read_bytes(), mtime=0))
    # The hub reaches the instance's :8888 the way it would across the VPC: here, a relay.
    to_notebook = network.relay(listen=("127.0.0.1", 0), connect=("10.0.1.10", 8888), connect_netns=host.netns)
    hub = start_hub(iid, f"http://127.0.0.1:{to_notebook.port}", SECRET_PREFIX)
    hub.api("POST", "/users/alice/server")

    wait_until(lambda: hub.api("GET", "/users/alice")["servers"].get("", {}).get("ready"), 120, "hub sees alice ready")

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

    # The home is on "EFS", owned by the user; the process runs as the user.
    efs_home = host.efs_dir / "home/jupyter-alice"
    uid = int(host.exec(["id", "-u", "jupyter-alice"]).stdout)
    assert efs_home.stat().st_uid == uid
    ps = host.exec(["ps", "-o", "user=,args=", "-C", "jupyterhub-singleuser", "-C", "python3"]).stdout
    assert any(line.startswith("jupyter") and "jupyterhub-singleuser" in line for line in ps.splitlines()), ps

    # A restarted instance runs the user data again: nothing changes, the server comes back.
    before = snapshot(host)
    first_console = host.console_output
    host.restart()
    wait_until(lambda: host.console_output.count("in the foreground") == 2, 60, "second boot reaches the server")
    wait_until(lambda: _answers(network, "http://10.0.1.10:8888/user/alice/api"), 90, "server back after restart")
    second = host.console_output[len(first_console) :]
    assert snapshot(host) == before
    for line in ("user: jupyter-alice exists", "singleuser.env unchanged", "(kept) on /home/jupyter-alice"):
        assert line in second
    assert "ERROR" not in second and token not in second
    assert hub.api("GET", "/users/alice")["servers"][""]["ready"]


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
    host.wait_for_console("running jupyterhub-singleuser as jupyter-bob", 60)
    assert host.console_output.count("no ec2hub:efs tag") == 1
    home = host.upper / "home/jupyter-bob"
    assert home.is_dir() and home.stat().st_uid == int(host.exec(["id", "-u", "jupyter-bob"]).stdout)
    assert host.exec(["mountpoint", "-q", "/mnt/efs"]).returncode != 0
