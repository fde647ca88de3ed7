"""The hub image's build step on a booted host: the hub user data's own script in its image mode
(``user-data.sh image``, what infra/images.py's hub component runs) installs or finds the venv,
Node and configurable-http-proxy and checks that they run, and does none of the per-host steps."""

from __future__ import annotations

import pytest

from infra.userdata import hub_image_script

from .conftest import needs_root

pytestmark = [needs_root, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_hub_image_mode_prepares_the_environment_and_nothing_of_a_hub_host(make_host):
    host = make_host("i-0a000000000000b01", "10.0.1.70", {"ec2hub:hub": "ec2hub-test"}, efs=False,
                     role="ec2hub-hub")
    host.start()
    host.wait_for_boot()
    done = host.exec(["/bin/bash", "-c", hub_image_script().decode()], timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ec2hub-hub: start: ec2hub hub image: installing the environment"
    assert "ec2hub-hub: proxy: /opt/ec2hub/node/bin has node and configurable-http-proxy" in lines
    assert lines[-1] == ("ec2hub-hub: done: the hub image's environment is in /opt/ec2hub/venv and "
                         "/opt/ec2hub/node/bin")
    # No hub host steps: no service user, no unit, no settings (those are every hub's own).
    assert host.exec(["id", "-u", "ec2hub"]).returncode != 0
    assert host.exec(["test", "-e", "/etc/systemd/system/ec2hub-hub.service"]).returncode != 0
    assert host.exec(["test", "-e", "/etc/ec2hub/settings.json"]).returncode != 0
