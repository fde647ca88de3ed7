"""Log shipping's pure parts (bootstrap/ec2hub_bootstrap/logship.py) and its refusals. What it asks
of systemd and the agent on a booted host is in test_systemd_branch.py."""

from __future__ import annotations

import pytest
from ec2hub_bootstrap.host import Console
from ec2hub_bootstrap.logship import agent_config, ensure_log_shipping, export_unit


def test_agent_config_sends_the_roles_file_to_its_group_one_stream_per_instance():
    assert agent_config("lab-2", "notebook") == {
        "agent": {"run_as_user": "root"},
        "logs": {"logs_collected": {"files": {"collect_list": [{
            "file_path": "/var/log/ec2hub/notebook.log",
            "log_group_name": "/ec2hub/lab-2/notebook",
            "log_stream_name": "{instance_id}",
            "timezone": "UTC",
        }]}}},
    }


def test_export_unit_follows_only_the_roles_units():
    unit = export_unit("notebook")
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == ("ExecStart=/usr/bin/journalctl --follow --output=short-iso-precise "
                          "--cursor-file=/var/lib/ec2hub-logs/notebook.cursor "
                          "--unit=ec2hub-singleuser.service --unit=ec2hub-nvidia.service")


@pytest.mark.parametrize(("hub_id", "line"), [
    ("bad;id", "ec2hub-hub: logs: hub id 'bad;id' is not a stack name: logs not shipped to CloudWatch"),
    ("ec2hub", ("ec2hub-hub: logs: no systemd (PID 1 is not systemd): logs stay on the console, "
               "not shipped to CloudWatch")),
])
def test_without_systemd_or_with_a_bad_hub_id_nothing_is_shipped_and_the_boot_goes_on(hub_id, line, capsys):
    assert ensure_log_shipping(Console("ec2hub-hub"), "hub", hub_id) is False  # PID 1 here is not systemd
    assert capsys.readouterr().out.strip() == line
