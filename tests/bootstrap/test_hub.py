"""The hub user data, run for real as root in an isolated host against IMDSv2 and the settings
parameter in the AWS emulator; the hub it starts must answer on the VPC."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import urllib.request
import uuid

import pytest

from infra.userdata import role_files, shipped_text
from sandbox.netns import http_get
from sandbox.runner import DEMO_USER, _Browser, create_demo_accounts, login

from .conftest import (
    GATEWAY,
    HUB_USER_DATA,
    REPO,
    STATE_SECRETS,
    client,
    needs_root,
    put_state_secrets,
    wait_until,
)

pytestmark = [needs_root, pytest.mark.slow]

HUB_DIR = REPO / "bootstrap/hub"
SETTINGS_PARAMETER = "/ec2hub/ec2hub-test/settings"
HUB_IP = "10.0.1.5"
HUB_DNS_NAME = "hub.ec2hub.internal"


def test_first_boot_script_is_shellcheck_clean():
    subprocess.run([str(REPO / ".venv/bin/shellcheck"), "-x", "--severity=style", "user-data.sh"],
                   cwd=HUB_DIR, check=True)


def settings_document(auth_type: str = "native", **extra) -> str:
    from ec2spawner.settings import HubSettings

    return HubSettings.model_validate(
        {
            **extra,
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
import json, os, sys
sys.path.insert(0, "/opt/ec2hub/bootstrap")
from ec2hub_bootstrap.hub import ENV_FILE, read_environment_file
os.environ.update(read_environment_file(open(ENV_FILE).read()))  # as systemd's EnvironmentFile=
from traitlets.config.loader import PyFileConfigLoader
c = PyFileConfigLoader("jupyterhub_config.py", path="/etc/ec2hub").load_config()
print(json.dumps({
    "cleanup_servers": c.JupyterHub.cleanup_servers,
    "hub_connect_ip": c.JupyterHub.hub_connect_ip,
    "hub_connect_url": c.EC2Spawner.get("hub_connect_url"),
    "authenticator_class": c.JupyterHub.authenticator_class,
    "admin_users": sorted(c.Authenticator.admin_users),
    "idle_timeout": c.EC2Spawner.idle_timeout,
    "spawner_class": c.JupyterHub.spawner_class,
    "db_url": c.JupyterHub.db_url,
    "upgrade_db": c.JupyterHub.upgrade_db,
}))
"""


ADMIN_SECRET = "ec2hub/ec2hub-test/admin-password-0123"
ADMIN_PASSWORD = "correct-horse-battery-staple-42"


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


def admin_account_has(hub_state, password: str) -> bool:
    """The account the hub made at start from the secret, as NativeAuthenticator keeps it (in the
    hub database: PostgreSQL)."""
    import bcrypt

    rows = hub_state.query("select password, is_authorized from users_info where username = 'admin'")
    return len(rows) == 1 and rows[0][1] and bcrypt.checkpw(password.encode(), bytes(rows[0][0]))


def files_holding(root, values: list[str]) -> list[str]:
    """Files under ``root`` (a host's disk: its overlay's upper layer) that contain any of ``values``."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            if any(v.encode() in data for v in values):
                found.append(str(path.relative_to(root)))
    return found


def hub_api_record(aws, zone_id: str) -> list[str]:
    """The addresses of the hub API's A record (infra/dns.py) in the emulator's Route 53."""
    records = client(aws, "route53").list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return [v["Value"] for r in records if (r["Name"], r["Type"]) == (HUB_DNS_NAME + ".", "A") for v in r["ResourceRecords"]]


def test_hub_user_data_starts_a_hub_on_its_database_and_keeps_nothing_on_its_disk(aws, network, make_host,
                                                                                   hub_state):
    from ec2hub_bootstrap.hub import hub_record_change, read_environment_file

    zone = client(aws, "route53").create_hosted_zone(Name="ec2hub.internal", CallerReference=str(uuid.uuid4()))
    zone_id = zone["HostedZone"]["Id"].rsplit("/", 1)[-1]
    document = settings_document(hub_dns_zone_id=zone_id, hub_dns_name=HUB_DNS_NAME)
    client(aws, "ssm").put_parameter(Name=SETTINGS_PARAMETER, Value=document, Type="String", Overwrite=True)
    put_admin_secret(aws)
    tags = hub_tags(**{"ec2hub:admin-password-secret": ADMIN_SECRET}, **hub_state.tags)
    host = make_host("i-0fedcba9876543210", HUB_IP, tags, efs=False, role="ec2hub-hub")
    host.start(HUB_USER_DATA)  # as EC2 gets it from infra: assembled from bootstrap/, gzip-compressed

    version = wait_until(lambda: _hub_api(network), 90, "the hub's /hub/api through the proxy on :8000")
    assert version["version"] == "6.1.1"

    etc, state = host.upper / "etc/ec2hub", host.upper / "var/lib/ec2hub"
    assert (etc / "settings.json").read_text() == document
    assert (etc / "jupyterhub_config.py").read_bytes() == (HUB_DIR / "jupyterhub_config.py").read_bytes()
    assert json.loads((etc / "host.json").read_text()) == {"private_ip": HUB_IP, "admin_user": "admin"}
    # The state secrets reach the service's environment through a root-only file on /run (tmpfs).
    assert host.exec(["stat", "-c", "%a %U %T", "/run/ec2hub/hub.env"]).stdout.split() == ["600", "root", "tmpfs"] or \
        host.exec(["stat", "-c", "%a %U", "/run/ec2hub/hub.env"]).stdout.split() == ["600", "root"]
    env = read_environment_file(host.exec(["cat", "/run/ec2hub/hub.env"], check=True).stdout)
    database_url = f"postgresql+psycopg://ec2hub:{hub_state.password}@{GATEWAY}:5432/jupyterhub?sslmode=require"
    assert env == {"EC2HUB_DB_URL": database_url, "JPY_COOKIE_SECRET": hub_state.cookie_secret,
                   "CONFIGPROXY_AUTH_TOKEN": hub_state.proxy_token}
    hub_pid = host.exec(["systemctl", "show", "--property=MainPID", "--value", "ec2hub-hub.service"]).stdout.strip()
    environ = host.exec(["cat", f"/proc/{hub_pid}/environ"]).stdout.split("\0")
    assert f"JPY_COOKIE_SECRET={hub_state.cookie_secret}" in environ
    # Nothing the hub keeps is on its disk: no database file, no secret in any file, console or log.
    assert not (state / "jupyterhub.sqlite").exists()
    assert not (state / "jupyterhub_cookie_secret").exists() and not (state / "proxy_auth_token").exists()
    assert files_holding(host.upper, hub_state.values) == []
    journal = host.journal()
    assert [v for v in hub_state.values if v in host.console_output or v in journal] == []
    # The admin account exists from the stack's secret, in the database.
    st = (state / "admin_password").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, int(host.exec(["id", "-u", "ec2hub"]).stdout))
    assert ADMIN_PASSWORD not in host.console_output
    assert admin_account_has(hub_state, ADMIN_PASSWORD)
    # JupyterHub made the schema and stamped it (upgrade_db): the next version migrates it.
    assert hub_state.query("select count(*) from alembic_version") == [(1,)]
    # The config the hub loaded: what apply_settings made of the settings, plus this host's facts.
    loaded = json.loads(host.exec(["/opt/ec2hub/venv/bin/python", "-c", LOAD_CONFIG], check=True, timeout=120).stdout)
    assert loaded == {
        "cleanup_servers": False,
        "hub_connect_ip": HUB_IP,  # the proxy's way to the hub, on this host
        "hub_connect_url": f"http://{HUB_DNS_NAME}:8081",  # the servers' (their JUPYTERHUB_API_URL)
        "authenticator_class": "ec2spawner.nativeauth.NativeAuthenticator",
        "admin_users": ["admin"],
        "idle_timeout": 3600,  # the settings' idle_timeout_s: the default of classes that set none
        "spawner_class": "ec2",
        "db_url": database_url,
        "upgrade_db": True,
    }
    # The hub API's stable name points at this host, claimed before the hub started.
    assert hub_api_record(aws, zone_id) == [HUB_IP]
    journal_lines = host.journal("ec2hub-hub.service").splitlines()
    claimed = [i for i, line in enumerate(journal_lines) if f"dns: {HUB_DNS_NAME} A {HUB_IP} (ttl 10 s) upserted" in line]
    assert claimed and claimed[0] < min(i for i, line in enumerate(journal_lines) if "Running JupyterHub version" in line)
    # The hub runs unprivileged, its culler (per-class idle_timeout and max_age) in its own process.
    ps = host.exec(["ps", "-eo", "user:20=,args="]).stdout
    assert re.search(r"^ec2hub\s+.*jupyterhub -f /etc/ec2hub/jupyterhub_config.py", ps, re.MULTILINE), ps
    wait_until(lambda: "ec2hub culler: checking servers" in host.journal("ec2hub-hub.service"), 60, "the culler")

    # The hub asks for its own restart (as when it takes the hub lease over, ec2spawner.lease):
    # systemd restarts it at once through ec2hub-hub-restart.path, not through Restart= (which
    # counts in NRestarts, after its 5 s RestartSec).
    request = "/var/lib/ec2hub/restart-requested"
    as_hub = ["setpriv", "--reuid=ec2hub", "--regid=ec2hub", "--clear-groups", "--"]
    host.exec([*as_hub, "/bin/sh", "-c", f"echo i-0previousholder >{request}"], check=True)

    def main_pid() -> str:
        return host.exec(["systemctl", "show", "--property=MainPID", "--value", "ec2hub-hub.service"]).stdout.strip()

    wait_until(lambda: main_pid() not in ("", "0", hub_pid), 60, "the hub restarted on its request")
    wait_until(lambda: _hub_api(network), 90, "the hub after the restart it asked for")
    assert host.exec(["test", "-e", request]).returncode == 1  # taken
    restarts = host.exec(["systemctl", "show", "--property=NRestarts", "--value", "ec2hub-hub.service"])
    assert restarts.stdout.strip() == "0"
    assert "Finished ec2hub-hub-restart.service" in host.journal("ec2hub-hub-restart.service")

    # Stopped and started: cloud-init does not run the user data again (same instance id); the
    # enabled unit's every-start step fetches the same secrets again, and the hub comes back.
    before = {p: (etc / p).read_bytes() for p in ("settings.json", "host.json", "jupyterhub_config.py")}
    # Meanwhile the record was pointed elsewhere (another host's start): this start claims it again.
    client(aws, "route53").change_resource_record_sets(HostedZoneId=zone_id,
                                                       ChangeBatch=hub_record_change(HUB_DNS_NAME, "10.0.1.99"))
    host.restart()
    host.wait_for_boot()
    wait_until(lambda: _hub_api(network), 90, "the hub after a stop and start")
    second = host.journal("ec2hub-hub.service", this_boot=True)
    assert {p: (etc / p).read_bytes() for p in before} == before
    assert read_environment_file(host.exec(["cat", "/run/ec2hub/hub.env"], check=True).stdout) == env
    assert "/run/ec2hub/hub.env written (0600, root)" in second, second
    assert hub_api_record(aws, zone_id) == [HUB_IP]
    assert f"dns: {HUB_DNS_NAME} A {HUB_IP} (ttl 10 s) upserted in hosted zone {zone_id}" in second
    assert "ERROR" not in second
    assert host.console_output.count("ec2hub-hub: start:") == 1
    # The instance runs the repository's files (its modules without docstrings and comments).
    for path in role_files("hub"):
        assert (host.upper / "opt/ec2hub/bootstrap" / path).read_text() == shipped_text(path)


def test_a_new_hub_host_with_a_fresh_disk_finds_every_account_server_and_session(aws, network, make_host,
                                                                                 hub_state):
    """The hub host is lost and another (a new instance: a new, empty root disk) takes its place."""
    client(aws, "ssm").put_parameter(Name=SETTINGS_PARAMETER, Value=settings_document(), Type="String",
                                     Overwrite=True)
    put_admin_secret(aws)
    tags = hub_tags(**{"ec2hub:admin-password-secret": ADMIN_SECRET}, **hub_state.tags)
    first = make_host("i-0fedcba98765432a0", HUB_IP, tags, efs=False, role="ec2hub-hub")
    first.start(HUB_USER_DATA)
    wait_until(lambda: _hub_api(network), 90, "the first hub")
    forward = network.relay(listen=("127.0.0.1", 0), connect=(HUB_IP, 8000), connect_netns=network.vpc.netns)
    url = f"http://127.0.0.1:{forward.port}"
    accounts = create_demo_accounts(url, ADMIN_PASSWORD)  # signed up, approved by the admin
    session = _Browser(url)
    login(session, DEMO_USER, accounts[DEMO_USER])
    assert json.loads(session.get("/hub/api/user"))["name"] == DEMO_USER
    # A stopped server kept for resume: its state as the spawner saves it (orm.Spawner.state).
    kept = {"kept_instance_id": "i-0aaaabbbbccccdddd", "instance_class": "small"}
    hub_state.query("insert into spawners (user_id, name, state) select id, 'kept', %s from users where name = %s "
                    "returning id", json.dumps(kept), DEMO_USER)

    first.terminate()
    second = make_host("i-0fedcba98765432a1", HUB_IP, tags, efs=False, role="ec2hub-hub")
    second.start(HUB_USER_DATA)
    wait_until(lambda: _hub_api(network), 90, "the hub on the new host")

    # The session cookie the first host set still signs the user in (the same cookie secret).
    assert json.loads(session.get("/hub/api/user"))["name"] == DEMO_USER
    # Both accounts sign in with the same passwords.
    admin = _Browser(url)
    login(admin, "admin", ADMIN_PASSWORD)
    login(_Browser(url), DEMO_USER, accounts[DEMO_USER])
    token = admin.post_json("/hub/api/users/admin/tokens", {
        "note": "test", "scopes": ["list:users", "read:users", "read:servers", "admin:server_state"]})["token"]
    request = urllib.request.Request(f"{url}/hub/api/users/{DEMO_USER}?include_stopped_servers=1",
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        user = json.loads(response.read())
    # The server and its state, as the first hub left them.
    assert user["servers"]["kept"]["state"] == kept
    assert user["servers"]["kept"]["stopped"] is True
    assert "created system user ec2hub" in second.console_output  # a fresh disk indeed
    assert not (second.upper / "var/lib/ec2hub/jupyterhub.sqlite").exists()


def test_hub_refuses_dummy_authenticator_outside_the_sandbox_image(aws, network, make_host):
    client(aws, "ssm").put_parameter(
        Name=SETTINGS_PARAMETER, Value=settings_document("dummy"), Type="String", Overwrite=True
    )
    put_state_secrets(aws, "not-reached-in-this-test")  # the every-start step needs them first
    host = make_host("i-0fedcba9876543211", HUB_IP, hub_tags(**STATE_SECRETS), efs=False, role="ec2hub-hub")
    host.start(HUB_USER_DATA)
    # The config refuses at the hub's start: the unit fails (and systemd keeps retrying it).
    wait_until(lambda: "dummy authenticator, which is for the local sandbox only"
               in host.journal("ec2hub-hub.service"), 120, "the hub's refusal")
    restarts = ["systemctl", "show", "--property=NRestarts", "--value", "ec2hub-hub.service"]
    wait_until(lambda: int(host.exec(restarts).stdout.strip() or 0) >= 1, 60, "systemd restarting the failed hub")
    assert _hub_api(network) is None
