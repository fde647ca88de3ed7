"""The hub user data, run for real as root in an isolated host against IMDSv2 and the settings
parameter in the AWS emulator; the hub it starts must answer on the VPC."""

from __future__ import annotations

import json
import re
import stat
import subprocess

import pytest

from infra.userdata import role_files
from sandbox.netns import http_get

from .conftest import HUB_USER_DATA, REPO, client, needs_root, wait_until

pytestmark = [needs_root, pytest.mark.slow]

HUB_DIR = REPO / "bootstrap/hub"
SETTINGS_PARAMETER = "/ec2hub/ec2hub-test/settings"
HUB_IP = "10.0.1.5"


def test_first_boot_script_is_shellcheck_clean():
    subprocess.run([str(REPO / ".venv/bin/shellcheck"), "-x", "--severity=style", "user-data.sh"],
                   cwd=HUB_DIR, check=True)


def settings_document(auth_type: str = "native") -> str:
    from ec2spawner.settings import HubSettings

    return HubSettings.model_validate(
        {
            "region": "us-east-1",
            "hub_id": "ec2hub-test",
            "subnets": {"us-east-1a": "subnet-0123456789abcdef0"},
            "classes": [
                {
                    "slug": "small",
                    "display_name": "Small CPU",
                    "instance_types": ["t3.medium"],
                    "ami": "ami-0123456789abcdef0",
                    "launch_template_id": "lt-0123456789abcdef0",
                    "default": True,
                }
            ],
            "secret_prefix": "/ec2hub/ec2hub-test/servers/",
            "auth": {"type": auth_type},
        }
    ).dumps()


def hub_tags(**extra) -> dict[str, str]:
    tags = {
        "ec2hub:hub": "ec2hub-test",
        "ec2hub:settings-parameter": SETTINGS_PARAMETER,
        "ec2hub:spawner-asset": "s3://cdk-hnb659fds-assets-123456789012-us-east-1/spawner.zip",
        "ec2hub:admin-user": "admin",
        "Name": "ec2hub-test-hub",
    }
    tags.update(extra)
    return tags


LOAD_CONFIG = """
import json
from traitlets.config.loader import PyFileConfigLoader
c = PyFileConfigLoader("jupyterhub_config.py", path="/etc/ec2hub").load_config()
print(json.dumps({
    "cleanup_servers": c.JupyterHub.cleanup_servers,
    "hub_connect_ip": c.JupyterHub.hub_connect_ip,
    "authenticator_class": c.JupyterHub.authenticator_class,
    "admin_users": sorted(c.Authenticator.admin_users),
    "idle_timeout": c.EC2Spawner.idle_timeout,
    "spawner_class": c.JupyterHub.spawner_class,
    "db_url": c.JupyterHub.db_url,
}))
"""


ADMIN_SECRET = "ec2hub/ec2hub-test/admin-password-0123"
ADMIN_PASSWORD = "correct-horse-battery-staple-42"
# The account the hub made at start from the secret, as NativeAuthenticator keeps it.
CHECK_ADMIN = """
import sqlite3, sys, bcrypt
row = sqlite3.connect("/var/lib/ec2hub/jupyterhub.sqlite").execute(
    "select password, is_authorized from users_info where username = 'admin'").fetchone()
print(bool(row) and row[1] == 1 and bcrypt.checkpw(sys.argv[1].encode(), row[0]))
"""


def put_admin_secret(aws) -> None:
    sm = client(aws, "secretsmanager")
    try:
        sm.create_secret(Name=ADMIN_SECRET, SecretString=ADMIN_PASSWORD)
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=ADMIN_SECRET, SecretString=ADMIN_PASSWORD)


def _hub_api(network):
    try:
        status, body = http_get(network.vpc.netns, f"http://{HUB_IP}:8000/hub/api")
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def test_hub_user_data_starts_a_hub_that_answers_and_keeps_its_secrets(aws, network, make_host):
    document = settings_document()
    client(aws, "ssm").put_parameter(Name=SETTINGS_PARAMETER, Value=document, Type="String", Overwrite=True)
    put_admin_secret(aws)
    tags = hub_tags(**{"ec2hub:admin-password-secret": ADMIN_SECRET})
    host = make_host("i-0fedcba9876543210", HUB_IP, tags, efs=False, role="ec2hub-hub")
    host.start(HUB_USER_DATA)  # as EC2 gets it from infra: assembled from bootstrap/, gzip-compressed

    version = wait_until(lambda: _hub_api(network), 90, "the hub's /hub/api through the proxy on :8000")
    assert version["version"] == "6.1.1"

    etc, state = host.upper / "etc/ec2hub", host.upper / "var/lib/ec2hub"
    assert (etc / "settings.json").read_text() == document
    assert (etc / "jupyterhub_config.py").read_bytes() == (HUB_DIR / "jupyterhub_config.py").read_bytes()
    assert json.loads((etc / "host.json").read_text()) == {"private_ip": HUB_IP, "admin_user": "admin"}
    hub_uid = int(host.exec(["id", "-u", "ec2hub"]).stdout)
    secrets = {}
    for name in ("jupyterhub_cookie_secret", "proxy_auth_token", "admin_password"):
        st = (state / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, hub_uid), name
        secrets[name] = (state / name).read_bytes()
        assert secrets[name].strip().decode() not in host.console_output
    # The admin account exists from the stack's secret (nobody had to sign up under its name).
    assert (state / "admin_password").read_text() == ADMIN_PASSWORD + "\n"
    check = host.exec(["/opt/ec2hub/venv/bin/python", "-c", CHECK_ADMIN, ADMIN_PASSWORD], check=True)
    assert check.stdout.strip() == "True", check
    # The config the hub loaded: what apply_settings made of the settings, plus this host's facts.
    loaded = json.loads(host.exec(["/opt/ec2hub/venv/bin/python", "-c", LOAD_CONFIG], check=True).stdout)
    assert loaded == {
        "cleanup_servers": False,
        "hub_connect_ip": HUB_IP,
        "authenticator_class": "ec2spawner.nativeauth.NativeAuthenticator",
        "admin_users": ["admin"],
        "idle_timeout": 3600,  # the settings' idle_timeout_s: the default of classes that set none
        "spawner_class": "ec2",
        "db_url": "sqlite:////var/lib/ec2hub/jupyterhub.sqlite",
    }
    # The hub runs unprivileged, its culler (per-class idle_timeout and max_age) in its own process.
    ps = host.exec(["ps", "-eo", "user:20=,args="]).stdout
    assert re.search(r"^ec2hub\s+.*jupyterhub -f /etc/ec2hub/jupyterhub_config.py", ps, re.MULTILINE), ps
    wait_until(lambda: "ec2hub culler: checking servers" in host.journal("ec2hub-hub.service"), 60, "the culler")

    # Stopped and started: cloud-init does not run the user data again (same instance id); the
    # enabled unit's every-start step keeps the same secrets and files, and the hub comes back.
    before = {p: (etc / p).read_bytes() for p in ("settings.json", "host.json", "jupyterhub_config.py")}
    host.restart()
    host.wait_for_boot()
    wait_until(lambda: _hub_api(network), 90, "the hub after a stop and start")
    second = host.journal("ec2hub-hub.service", this_boot=True)
    assert {p: (etc / p).read_bytes() for p in before} == before
    assert {n: (state / n).read_bytes() for n in secrets} == secrets
    assert "jupyterhub_cookie_secret kept" in second and "proxy_auth_token kept" in second, second
    assert "ERROR" not in second
    assert host.console_output.count("ec2hub-hub: start:") == 1
    # The instance runs the repository's files, byte for byte.
    for path in role_files("hub"):
        assert (host.upper / "opt/ec2hub/bootstrap" / path).read_bytes() == (REPO / "bootstrap" / path).read_bytes()


def test_hub_refuses_dummy_authenticator_outside_the_sandbox_image(aws, network, make_host):
    client(aws, "ssm").put_parameter(
        Name=SETTINGS_PARAMETER, Value=settings_document("dummy"), Type="String", Overwrite=True
    )
    host = make_host("i-0fedcba9876543211", HUB_IP, hub_tags(), efs=False, role="ec2hub-hub")
    host.start(HUB_USER_DATA)
    # The config refuses at the hub's start: the unit fails (and systemd keeps retrying it).
    wait_until(lambda: "dummy authenticator, which is for the local sandbox only"
               in host.journal("ec2hub-hub.service"), 120, "the hub's refusal")
    restarts = ["systemctl", "show", "--property=NRestarts", "--value", "ec2hub-hub.service"]
    wait_until(lambda: int(host.exec(restarts).stdout.strip() or 0) >= 1, 60, "systemd restarting the failed hub")
    assert _hub_api(network) is None
