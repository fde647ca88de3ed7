"""What both user-data scripts ask of systemd, exactly, on a booted host.

The host boots systemd as PID 1 and cloud-init runs the real user data, with a ``systemctl`` first
on its PATH that records its arguments instead of acting, so each test sees the calls and the
installed units before anything starts. What systemd runs on each start of a unit, its
ExecStartPre= command, is run here the way systemd runs a "+" command: as root, with the command
line of the installed unit. tests/bootstrap/test_booted_instance.py runs the units for real.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex

import pytest
from ec2hub_bootstrap.notebook import FRESH_MARK

from infra.userdata import shipped_text
from sandbox.host import upper_path

from .conftest import (
    HUB_USER_DATA,
    NOTEBOOK_USER_DATA,
    REPO,
    STATE_SECRETS,
    client,
    needs_root,
    notebook_tags,
    put_state_secrets,
)

pytestmark = [needs_root, pytest.mark.slow]

FAKE_SYSTEMCTL = "#!/bin/sh\necho \"$*\" >>/var/log/fake-systemctl.log\n"
WRAPPER = b"""#!/bin/bash
# The recording systemctl first on the PATH, then the real user data. (cloud-init's own calls,
# before the user data ran, are not the user data's.)
export PATH=/usr/local/sbin:$PATH
: >/var/log/fake-systemctl.log
exec /bin/bash /var/lib/ec2hub-test/user-data.sh
"""
SECRET_PREFIX = "/ec2hub/ec2hub-test/servers/"


def boot_with_fake_systemd(host, user_data):
    for path, data, mode in [
        ("/usr/local/sbin/systemctl", FAKE_SYSTEMCTL.encode(), 0o755),
        ("/var/lib/ec2hub-test/user-data.sh", gzip.decompress(user_data), 0o700),
    ]:
        target = upper_path(host.upper, path)
        target.write_bytes(data)
        target.chmod(mode)
    host.start(WRAPPER)
    assert host.wait_for_user_data() == 0, host.logs
    return (host.upper / "var/log/fake-systemctl.log").read_text().splitlines()


def assert_unit_verifies(host, unit: str, max_exposure: float):
    """systemd's own checks, inside the instance (its users and binaries): syntax and exposure."""
    verify = host.exec(["systemd-analyze", "verify", "--man=no", f"/etc/systemd/system/{unit}"])
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = host.exec(["systemd-analyze", "security", "--offline=true", f"--threshold={int(max_exposure * 10)}",
                          f"/etc/systemd/system/{unit}"])
    assert security.returncode == 0, security.stdout[-1500:]


def run_exec_start_pre(host, unit: str) -> str:
    """Run the installed unit's ExecStartPre=+ command as systemd would on a start; its output."""
    lines = (host.upper / f"etc/systemd/system/{unit}").read_text().splitlines()
    pres = [line.removeprefix("ExecStartPre=") for line in lines if line.startswith("ExecStartPre=")]
    assert len(pres) == 1, f"{unit}: one ExecStartPre= expected, found {pres}"
    pre = pres[0]
    assert pre.startswith("+"), "runs as root, outside the unit's sandboxing"
    result = host.exec(shlex.split(pre[1:]), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def put_secret(aws, iid: str, token: str):
    client(aws, "ssm").put_parameter(
        Name=SECRET_PREFIX + iid, Value=json.dumps({"JUPYTERHUB_API_TOKEN": token}), Type="SecureString",
        Overwrite=True,
    )


def test_notebook_installs_hardened_units_and_fstab_entries(aws, make_host):
    iid = "i-0d00000000000000a"
    host = make_host(iid, "10.0.1.40", notebook_tags("carol"))
    host.upper.mkdir(parents=True, exist_ok=True)
    calls = boot_with_fake_systemd(host, NOTEBOOK_USER_DATA)
    assert calls == ["daemon-reload", "enable --no-reload ec2hub-singleuser.service ec2hub-activity.service",
                     "restart ec2hub-singleuser.service ec2hub-activity.service"]
    units = host.upper / "etc/systemd/system"
    for name in ("ec2hub-singleuser.service", "ec2hub-nvidia.service", "ec2hub-activity.service"):
        assert (units / name).read_text() == shipped_text(f"notebook/{name}")  # the repository's, minus comments
    dropin = (units / "ec2hub-singleuser.service.d/10-user.conf").read_text().splitlines()
    for line in ("User=jupyter-carol", "ReadWritePaths=/home/jupyter-carol", "RequiresMountsFor=/home/jupyter-carol",
                 "WorkingDirectory=/home/jupyter-carol"):
        assert line in dropin
    assert_unit_verifies(host, "ec2hub-singleuser.service", max_exposure=2.6)  # PrivateDevices=yes, no filter: 3.7
    assert_unit_verifies(host, "ec2hub-nvidia.service", max_exposure=10)
    assert_unit_verifies(host, "ec2hub-activity.service", max_exposure=10)
    tags = notebook_tags("carol")
    bind = (f"fs-0123456789abcdef0:/ /home/jupyter-carol efs _netdev,tls,iam,accesspoint={tags['ec2hub:efs-access-point']}"
            " 0 0")
    assert (host.upper / "etc/fstab").read_text().splitlines().count(bind) == 1
    # No secret yet (the spawner writes it just after launch): the user data's fetch ahead of the
    # first start does not wait for it, the unit's every-start step does.
    assert not (host.upper / "etc/ec2hub/singleuser.env").exists()
    assert host.exec(["test", "-e", FRESH_MARK]).returncode == 1  # /run: the instance's tmpfs
    assert "ec2hub-notebook: secret: not there yet (ParameterNotFound): the server's unit waits for it" in host.console_output
    assert "ERROR" not in host.console_output

    # Run again on the same disk (each step is idempotent): nothing to reload or restart, no
    # second fstab line.
    again = host.exec(["/bin/bash", "/var/lib/ec2hub-test/user-data.sh"], timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    calls = (host.upper / "var/log/fake-systemctl.log").read_text().splitlines()
    assert calls[3:] == ["enable --no-reload ec2hub-singleuser.service ec2hub-activity.service",
                         "start ec2hub-singleuser.service ec2hub-activity.service"]
    assert (host.upper / "etc/fstab").read_text().splitlines().count(bind) == 1


def test_each_start_of_the_notebook_unit_reads_the_current_secret(aws, make_host):
    iid = "i-0d00000000000000c"
    put_secret(aws, iid, "first-token")
    host = make_host(iid, "10.0.1.42", notebook_tags("carol", efs=None), efs=False)
    host.upper.mkdir(parents=True, exist_ok=True)
    boot_with_fake_systemd(host, NOTEBOOK_USER_DATA)
    env_file = host.upper / "etc/ec2hub/singleuser.env"

    # The user data fetched it ahead of the server's first start, which uses it without fetching.
    assert 'JUPYTERHUB_API_TOKEN="first-token"' in env_file.read_text()
    assert "singleuser.env written" in host.console_output and "first-token" not in host.console_output
    assert host.exec(["test", "-e", FRESH_MARK]).returncode == 0
    output = run_exec_start_pre(host, "ec2hub-singleuser.service")
    assert "fetched by this boot's bootstrap for the server's first start" in output, output
    assert host.exec(["test", "-e", FRESH_MARK]).returncode == 1
    # Every later start fetches it: unchanged, the file is too.
    assert "singleuser.env unchanged" in run_exec_start_pre(host, "ec2hub-singleuser.service")
    # The spawner rewrites the secret before a resume or a reboot: the next start uses it.
    put_secret(aws, iid, "second-token")
    output = run_exec_start_pre(host, "ec2hub-singleuser.service")
    assert 'JUPYTERHUB_API_TOKEN="second-token"' in env_file.read_text()
    assert "first-token" not in env_file.read_text() and "second-token" not in output
    # Unchanged secret: unchanged file.
    assert "singleuser.env unchanged" in run_exec_start_pre(host, "ec2hub-singleuser.service")
    # The GPU oneshot the server wants: on this CPU host it succeeds and says why it did nothing.
    [gpu] = [line for line in (host.upper / "etc/systemd/system/ec2hub-nvidia.service").read_text().splitlines()
             if line.startswith("ExecStart=")]
    result = host.exec(shlex.split(gpu.removeprefix("ExecStart=")))
    assert result.returncode == 0 and "no NVIDIA driver tools" in result.stdout


def test_hub_installs_its_unit_and_each_start_reapplies_settings_and_config(aws, make_host):
    from .test_hub import SETTINGS_PARAMETER, hub_tags, settings_document

    ssm = client(aws, "ssm")
    ssm.put_parameter(Name=SETTINGS_PARAMETER, Value=settings_document(), Type="String", Overwrite=True)
    cookie_secret, _ = put_state_secrets(aws, "not-connected-in-this-test")
    host = make_host("i-0d00000000000000b", "10.0.1.41", hub_tags(**STATE_SECRETS), efs=False, role="ec2hub-hub")
    host.upper.mkdir(parents=True, exist_ok=True)
    calls = boot_with_fake_systemd(host, HUB_USER_DATA)
    assert calls == ["daemon-reload", "enable ec2hub-hub.service ec2hub-settings-watch.service ec2hub-hub-restart.path",
                     "restart ec2hub-hub.service", "restart ec2hub-settings-watch.service ec2hub-hub-restart.path"]
    # Launched outside an Auto Scaling group (no ec2hub:cfn-signal tag): no signal is waited for.
    assert "no ec2hub:cfn-signal tag: no Auto Scaling group waits for this host's signal" in host.console_output
    # No CloudWatch agent on this image (and no dnf to install it): said once, nothing else done.
    assert "ec2hub-hub: logs: no CloudWatch agent" in host.console_output
    installed = host.upper / "etc/systemd/system/ec2hub-hub.service"
    assert installed.read_text() == shipped_text("hub/ec2hub-hub.service")  # the repository's, minus comments
    assert_unit_verifies(host, "ec2hub-hub.service", max_exposure=3.5)
    assert_unit_verifies(host, "ec2hub-hub-restart.service", max_exposure=10)
    verify = host.exec(["systemd-analyze", "verify", "--man=no", "/etc/systemd/system/ec2hub-hub-restart.path"])
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    etc = host.upper / "etc/ec2hub"
    assert not (etc / "settings.json").exists()  # the unit's first start fetches it
    run_exec_start_pre(host, "ec2hub-hub.service")
    assert (etc / "settings.json").read_text() == settings_document()
    assert (etc / "jupyterhub_config.py").read_bytes() == (REPO / "bootstrap/hub/jupyterhub_config.py").read_bytes()
    environment = host.exec(["cat", "/run/ec2hub/hub.env"], check=True).stdout
    assert f'JPY_COOKIE_SECRET="{cookie_secret}"' in environment

    # Day two: new settings, a config file edited on the host; the next start re-applies both.
    ssm.put_parameter(Name=SETTINGS_PARAMETER, Value=settings_document("dummy"), Type="String", Overwrite=True)
    (etc / "jupyterhub_config.py").write_text("# edited by hand\n")
    output = run_exec_start_pre(host, "ec2hub-hub.service")
    assert (etc / "settings.json").read_text() == settings_document("dummy")
    assert (etc / "jupyterhub_config.py").read_bytes() == (REPO / "bootstrap/hub/jupyterhub_config.py").read_bytes()
    assert re.search(r"settings\.json from /ec2hub/ec2hub-test/settings version \d+ written", output), output
    assert host.exec(["cat", "/run/ec2hub/hub.env"], check=True).stdout == environment


FAKE_AGENT_CTL = "#!/bin/sh\necho \"agent-ctl $*\" >>/var/log/fake-systemctl.log\n"


def test_hub_ships_its_journal_to_cloudwatch_when_the_agent_is_there(aws, make_host):
    from ec2hub_bootstrap.logship import AGENT_CTL, agent_config

    from .test_hub import SETTINGS_PARAMETER, hub_tags, settings_document

    client(aws, "ssm").put_parameter(Name=SETTINGS_PARAMETER, Value=settings_document(), Type="String",
                                     Overwrite=True)
    host = make_host("i-0d00000000000000c", "10.0.1.42", hub_tags(), efs=False, role="ec2hub-hub")
    host.upper.mkdir(parents=True, exist_ok=True)
    ctl = upper_path(host.upper, AGENT_CTL)
    ctl.parent.mkdir(parents=True, exist_ok=True)
    ctl.write_text(FAKE_AGENT_CTL)
    ctl.chmod(0o755)
    calls = boot_with_fake_systemd(host, HUB_USER_DATA)
    # The exporter and the agent first, so the hub's first lines are shipped too.
    assert calls == [
        "daemon-reload", "enable --now ec2hub-journal-export.service",
        "agent-ctl -a fetch-config -m ec2 -s -c file:/etc/ec2hub/cloudwatch-agent.json",
        "daemon-reload", "enable ec2hub-hub.service ec2hub-settings-watch.service ec2hub-hub-restart.path",
        "restart ec2hub-hub.service", "restart ec2hub-settings-watch.service ec2hub-hub-restart.path",
    ]
    config = json.loads((host.upper / "etc/ec2hub/cloudwatch-agent.json").read_text())
    assert config == agent_config("ec2hub-test", "hub")
    assert config["logs"]["logs_collected"]["files"]["collect_list"][0]["log_group_name"] == "/ec2hub/ec2hub-test/hub"
    unit = (host.upper / "etc/systemd/system/ec2hub-journal-export.service").read_text()
    assert "--unit=ec2hub-hub.service" in unit and "StandardOutput=append:/var/log/ec2hub/hub.log" in unit
    assert_unit_verifies(host, "ec2hub-journal-export.service", max_exposure=6.0)
    assert (host.upper / "etc/logrotate.d/ec2hub").exists()
