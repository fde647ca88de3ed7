"""Ship this host's unit logs to CloudWatch Logs, when the CloudWatch agent is there.

The CloudWatch agent tails files; the hub's and the notebook's units log to the journal. So:

1. ``ec2hub-journal-export.service`` copies the role's units' journal (``journalctl --follow``,
   resumed from a cursor file after a restart) to ``/var/log/ec2hub/<role>.log``; logrotate
   keeps that file small (``copytruncate``: the exporter's append-mode descriptor stays valid).
2. The agent (``amazon-cloudwatch-agent``, a dnf package on Amazon Linux 2023, installed here when
   missing and dnf is there) sends the file to the log group ``/ec2hub/<hub_id>/<role>``, one
   stream per instance id. The stack makes the groups (infra/observability.py, same names) and
   lets each role only CreateLogStream and PutLogEvents on its own group.

Without systemd as PID 1 (a container) or without the agent (no dnf, no network to the
repositories, the local sandbox) this logs one line saying so and ships nothing: the logs stay in
the journal and on the console, and the bootstrap goes on. Shipping logs never fails a boot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from .host import Console, shown, systemd_is_pid1, write_if_changed

LOG_DIR = "/var/log/ec2hub"
AGENT_CTL = "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"
AGENT_PACKAGE = "amazon-cloudwatch-agent"
AGENT_CONFIG = "/etc/ec2hub/cloudwatch-agent.json"
EXPORT_UNIT = "ec2hub-journal-export.service"
EXPORT_UNIT_PATH = "/etc/systemd/system/" + EXPORT_UNIT
LOGROTATE_PATH = "/etc/logrotate.d/ec2hub"
# The units whose journal each role ships.
UNITS = {
    "hub": ("ec2hub-hub.service",),
    "notebook": ("ec2hub-singleuser.service", "ec2hub-nvidia.service"),
}


def log_group_name(hub_id: str, role: str) -> str:
    """The role's log group; infra.observability.log_group_name names it the same way."""
    return f"/ec2hub/{hub_id}/{role}"


def agent_config(hub_id: str, role: str) -> dict:
    """The CloudWatch agent's configuration: the role's log file to its group, a stream per instance."""
    return {
        "agent": {"run_as_user": "root"},
        "logs": {
            "logs_collected": {
                "files": {
                    "collect_list": [
                        {
                            "file_path": f"{LOG_DIR}/{role}.log",
                            "log_group_name": log_group_name(hub_id, role),
                            "log_stream_name": "{instance_id}",
                            "timezone": "UTC",
                        }
                    ]
                }
            }
        },
    }


def export_unit(role: str) -> str:
    """The unit that copies the role's journal to its log file (systemd.exec(5) sandboxing)."""
    units = " ".join(f"--unit={u}" for u in UNITS[role])
    return f"""# ec2hub: the {role}'s journal as {LOG_DIR}/{role}.log, which the CloudWatch agent ships.
# Written by bootstrap/ec2hub_bootstrap/logship.py.
[Unit]
Description=ec2hub: copy the {role} units' journal to {LOG_DIR}/{role}.log for CloudWatch Logs
After=systemd-journald.service

[Service]
Type=simple
ExecStart=/usr/bin/journalctl --follow --output=short-iso-precise --cursor-file=/var/lib/ec2hub-logs/{role}.cursor {units}
StandardOutput=append:{LOG_DIR}/{role}.log
Restart=always
RestartSec=5
# Root, to read the whole journal; it writes only its cursor (StateDirectory=). The log file is
# opened by systemd itself (append:), outside the sandboxing.
StateDirectory=ec2hub-logs
UMask=0022
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateNetwork=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX
CapabilityBoundingSet=

[Install]
WantedBy=multi-user.target
"""


LOGROTATE = f"""# ec2hub: the journal copies the CloudWatch agent ships (bootstrap/ec2hub_bootstrap/logship.py).
{LOG_DIR}/*.log {{
    size 50M
    rotate 2
    copytruncate
    missingok
    notifempty
}}
"""


def ensure_log_shipping(console: Console, role: str, hub_id: str) -> bool:
    """Set up shipping of the role's logs; False (one console line) when it cannot be done here."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,62}", hub_id):  # a tag value: data, checked
        console.log("logs", f"hub id {shown(hub_id)} is not a stack name: logs not shipped to CloudWatch")
        return False
    if not systemd_is_pid1():
        console.log("logs", "no systemd (PID 1 is not systemd): logs stay on the console, not shipped to CloudWatch")
        return False
    if not os.path.exists(AGENT_CTL) and shutil.which("dnf"):
        proc = subprocess.run(["dnf", "install", "-y", "-q", AGENT_PACKAGE], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, check=False)
        console.log("logs", f"dnf install {AGENT_PACKAGE}: {'done' if proc.returncode == 0 else proc.stdout.strip()[-200:]}")
    if not os.path.exists(AGENT_CTL):
        console.log("logs", f"no CloudWatch agent ({AGENT_CTL}; on Amazon Linux 2023: dnf install "
                    f"{AGENT_PACKAGE}): logs stay in the journal, not shipped to CloudWatch")
        return False
    os.makedirs(LOG_DIR, mode=0o755, exist_ok=True)
    unit_changed = write_if_changed(EXPORT_UNIT_PATH, export_unit(role), 0o644)
    write_if_changed(LOGROTATE_PATH, LOGROTATE, 0o644)
    os.makedirs(os.path.dirname(AGENT_CONFIG), exist_ok=True)
    write_if_changed(AGENT_CONFIG, json.dumps(agent_config(hub_id, role), indent=2) + "\n", 0o644)
    if unit_changed:
        console.run("logs", ["systemctl", "daemon-reload"])
    console.run("logs", ["systemctl", "enable", "--now", EXPORT_UNIT])
    # fetch-config translates the file into the agent's own configuration; -s (re)starts it.
    console.run("logs", [AGENT_CTL, "-a", "fetch-config", "-m", "ec2", "-s", "-c", f"file:{AGENT_CONFIG}"])
    console.log("logs", f"shipping {', '.join(UNITS[role])} to {log_group_name(hub_id, role)}")
    return True
