"""The systemd branch of both user-data scripts, on a host where "systemd is PID 1".

There is no systemd here, so the host gets what sd_booted(3) looks at (/run/systemd/system) and a
``systemctl`` that records its arguments; everything else is the real script in an isolated host.
"""

from __future__ import annotations

import json

import pytest

from sandbox.host import upper_path

from .conftest import (
    HUB_USER_DATA,
    NOTEBOOK_USER_DATA,
    REPO,
    client,
    needs_root,
    notebook_tags,
)

pytestmark = [needs_root, pytest.mark.slow]

FAKE_SYSTEMCTL = "#!/bin/sh\necho \"$*\" >>/var/log/fake-systemctl.log\n"
WRAPPER = b"""#!/bin/bash
# What a systemd boot looks like to sd_booted(3), then the real user data.
mkdir -p /run/systemd/system
exec /bin/bash /var/lib/ec2hub-test/user-data.sh
"""


def boot_with_fake_systemd(host, user_data):
    for path, text, mode in [
        ("/usr/local/sbin/systemctl", FAKE_SYSTEMCTL, 0o755),
        ("/var/lib/ec2hub-test/user-data.sh", user_data.read_text(), 0o700),
    ]:
        target = upper_path(host.upper, path)
        target.write_text(text)
        target.chmod(mode)
    host.start(WRAPPER)
    host.wait_for_console(r"user data exited with status \d+", 60)
    assert host.user_data_exit_status == 0, host.console_output
    return (host.upper / "var/log/fake-systemctl.log").read_text().splitlines()


def assert_unit_verifies(host, unit: str, max_exposure: float):
    """systemd's own checks, inside the instance (its users and binaries): syntax and exposure."""
    verify = host.exec(["systemd-analyze", "verify", "--man=no", f"/etc/systemd/system/{unit}"])
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = host.exec(["systemd-analyze", "security", "--offline=true", f"--threshold={int(max_exposure * 10)}",
                          f"/etc/systemd/system/{unit}"])
    assert security.returncode == 0, security.stdout[-1500:]


def test_notebook_installs_a_hardened_unit_and_fstab_entries(aws, make_host):
    iid = "i-0d00000000000000a"
    client(aws, "ssm").put_parameter(
        Name="/ec2hub/ec2hub-test/servers/" + iid, Value=json.dumps({"JUPYTERHUB_API_TOKEN": "t"}),
        Type="SecureString", Overwrite=True,
    )
    host = make_host(iid, "10.0.1.40", notebook_tags("carol"))
    host.upper.mkdir(parents=True, exist_ok=True)
    calls = boot_with_fake_systemd(host, NOTEBOOK_USER_DATA)
    assert calls == ["daemon-reload", "enable ec2hub-singleuser.service", "restart ec2hub-singleuser.service"]
    unit = (host.upper / "etc/systemd/system/ec2hub-singleuser.service").read_text().splitlines()
    for line in ("User=jupyter-carol", "ReadWritePaths=/home/jupyter-carol", "RequiresMountsFor=/home/jupyter-carol",
                 "EnvironmentFile=/etc/ec2hub/singleuser.env", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert line in unit
    assert_unit_verifies(host, "ec2hub-singleuser.service", max_exposure=3.5)
    bind = "/mnt/efs/home/jupyter-carol /home/jupyter-carol none bind,x-systemd.requires-mounts-for=/mnt/efs 0 0"
    assert (host.upper / "etc/fstab").read_text().splitlines().count(bind) == 1

    # Again on the same disk: nothing to reload or restart, no second fstab line.
    host.restart()
    host.wait_for_console(r"(?s)exited with status \d+.*exited with status \d+", 60)
    calls = (host.upper / "var/log/fake-systemctl.log").read_text().splitlines()
    assert calls[3:] == ["enable ec2hub-singleuser.service", "start ec2hub-singleuser.service"]
    assert (host.upper / "etc/fstab").read_text().splitlines().count(bind) == 1


def test_hub_installs_its_unit_byte_for_byte(aws, make_host):
    from .test_hub import SETTINGS_PARAMETER, hub_tags, settings_document

    client(aws, "ssm").put_parameter(Name=SETTINGS_PARAMETER, Value=settings_document(), Type="String", Overwrite=True)
    host = make_host("i-0d00000000000000b", "10.0.1.41", hub_tags(), efs=False, role="ec2hub-hub")
    host.upper.mkdir(parents=True, exist_ok=True)
    calls = boot_with_fake_systemd(host, HUB_USER_DATA)
    assert calls == ["daemon-reload", "enable ec2hub-hub.service", "restart ec2hub-hub.service"]
    installed = host.upper / "etc/systemd/system/ec2hub-hub.service"
    assert installed.read_bytes() == (REPO / "bootstrap/hub/ec2hub-hub.service").read_bytes()
    assert_unit_verifies(host, "ec2hub-hub.service", max_exposure=3.5)
