"""ec2hub hub launcher: IMDS tags -> spawner package, settings, config, host facts, kept secrets.

Run with /opt/ec2hub/venv's Python as ``python -m ec2hub_bootstrap.hub <command>`` (PYTHONPATH
/opt/ec2hub/bootstrap), as root:

``boot``      once per instance, from the user data (user-data.sh): install the unit and, with
              systemd as PID 1, (re)start it; without it (a container, the local sandbox)
              ``prestart`` here, then the hub in the foreground as its unit would run it.
``prestart``  on every start of the hub (the unit's ExecStartPre=+): fetch and re-apply the
              settings parameter, the spawner package (when its tag names a new one) and the
              config, idempotently; secrets made once (cookie secret, proxy token) are kept.

Tag values are checked here and written as JSON or passed as argv; none reaches a shell.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .host import Console, shown, systemd_is_pid1, unit_command, write_if_changed
from .imds import Imds, read_tags
from .logship import ensure_log_shipping

VENV = "/opt/ec2hub/venv"
ETC = "/etc/ec2hub"
STATE = "/var/lib/ec2hub"
HUB_USER = "ec2hub"
UNIT_NAME = "ec2hub-hub.service"
UNIT_PATH = "/etc/systemd/system/" + UNIT_NAME
# The spawner asset (s3://...) installed last, so a new one is installed on the next start.
SPAWNER_RECORD = "/opt/ec2hub/spawner-asset.installed"
# The unit and config, as the user data wrote them next to this module.
SOURCES = Path(__file__).resolve().parent.parent / "hub"

console = Console("ec2hub-hub")
log, die, run = console.log, console.die, console.run


def aws_errors() -> tuple[type[Exception], ...]:
    """What a boto3 call raises for an AWS error or an unreachable endpoint."""
    import botocore.exceptions

    return (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


def aws_client(service: str, region: str):
    import boto3
    import botocore.config

    return boto3.client(
        service, region_name=region,
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 8}),
    )


def ensure_spawner(asset: str | None, region: str) -> None:
    """ec2spawner in the venv: the one a baked AMI has, else the asset the tag names, installed
    again when the tag names another one (a stack update)."""
    try:
        installed = Path(SPAWNER_RECORD).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        installed = None
    if installed is None and importlib.util.find_spec("ec2spawner") is not None:
        log("spawner", f"{VENV} has ec2spawner (baked)")
        return
    if installed is not None and installed == asset:
        log("spawner", f"ec2spawner from {asset} installed, unchanged")
        return
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/([A-Za-z0-9!_.*'()/-]+\.zip)", asset or "")
    if not match:
        die("spawner", f"no ec2spawner in {VENV} and tag ec2hub:spawner-asset {shown(asset or '')} "
            "is not s3://bucket/key.zip")
    archive = "/opt/ec2hub/spawner-asset.zip"
    source = "/opt/ec2hub/spawner-src"
    aws_client("s3", region).download_file(match.group(1), match.group(2), archive)
    shutil.rmtree(source, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(source)  # zipfile drops absolute and ".." parts of member names
    pip = [f"{VENV}/bin/python", "-m", "pip", "--disable-pip-version-check", "--quiet"]
    if installed is not None:  # the same version number may be a new build: replace it
        subprocess.run([*pip, "uninstall", "--yes", "ec2spawner"], check=False, stdout=subprocess.DEVNULL)
    result = subprocess.run([*pip, "install", source], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            check=False)
    if result.returncode != 0:
        die("spawner", f"pip install of the spawner asset failed: {result.stdout[-2000:]}")
    write_if_changed(SPAWNER_RECORD, asset + "\n", 0o644)
    importlib.invalidate_caches()
    log("spawner", f"installed ec2spawner from {asset}")


def ensure_settings(name: str, region: str):
    from ec2spawner.settings import HubSettings

    try:
        value = aws_client("ssm", region).get_parameter(Name=name)["Parameter"]["Value"]
    except aws_errors() as exc:  # say what to fix
        die("settings", f"GetParameter {name}: {exc}")
    try:
        settings = HubSettings.model_validate_json(value)
    except ValueError as exc:
        die("settings", f"{name} is not a valid hub settings document: {exc}")
    changed = write_if_changed(f"{ETC}/settings.json", value, 0o644)
    log("settings", f"{ETC}/settings.json from {name} {'written' if changed else 'unchanged'} "
        f"(hub {settings.hub_id}, {len(settings.classes)} classes, auth {settings.auth.type})")
    return settings


def ensure_config() -> None:
    changed = write_if_changed(f"{ETC}/jupyterhub_config.py",
                               (SOURCES / "jupyterhub_config.py").read_text(encoding="utf-8"), 0o644)
    log("files", f"{ETC}/jupyterhub_config.py {'written' if changed else 'unchanged'}")


def ensure_host_facts(private_ip: str, admin_user: str | None) -> None:
    facts = {"private_ip": private_ip, "admin_user": admin_user or None}
    changed = write_if_changed(f"{ETC}/host.json", json.dumps(facts, indent=2) + "\n", 0o644)
    log("host", f"{ETC}/host.json {'written' if changed else 'unchanged'} (private ip {private_ip}, "
        f"admin {shown(admin_user) if admin_user else 'none'})")


def ensure_secret_file(name: str, make) -> None:
    """A secret made once and kept: 0600, owned by the hub user."""
    path = f"{STATE}/{name}"
    hub = pwd.getpwnam(HUB_USER)
    if os.path.exists(path) and os.path.getsize(path) > 0:
        os.chown(path, hub.pw_uid, hub.pw_gid)
        os.chmod(path, 0o600)
        log("secrets", f"{path} kept")
        return
    write_if_changed(path, make(), 0o600, owner=hub.pw_uid)
    log("secrets", f"{path} created (0600)")


def ensure_oauth_secret(settings, region: str) -> None:
    """The identity provider's client secret from Secrets Manager (the stack made the secret, the
    operator put the value), fetched at every start into a 0600 file only the hub config reads.
    Not an environment variable: the hub's children (the proxy, the idle culler) would inherit it.
    While the secret still holds the stack's placeholder the hub does not start, with a line that
    says what to run; systemd retries, so the hub starts once the value is there. Never printed."""
    from ec2spawner.settings import OAUTH_SECRET_PLACEHOLDER_KEY

    name = settings.auth.oauth_client_secret_name
    path = f"{STATE}/oauth_client_secret"
    if not name:
        if os.path.exists(path):
            os.remove(path)
        return
    try:
        value = aws_client("secretsmanager", region).get_secret_value(SecretId=name)["SecretString"]
    except aws_errors() as exc:
        die("secrets", f"GetSecretValue {shown(name)} (the OAuth client secret): {type(exc).__name__}")
    if OAUTH_SECRET_PLACEHOLDER_KEY in value:
        die("secrets", f"{shown(name)} still holds the stack's placeholder: put the {settings.auth.type} "
            "client secret there (the stack's OAuthClientSecretCommand output); the hub starts once it is there")
    changed = write_if_changed(path, value.strip() + "\n", 0o600, owner=pwd.getpwnam(HUB_USER).pw_uid)
    log("secrets", f"{path} from {shown(name)} {'written' if changed else 'unchanged'} (0600)")


def ensure_admin_password(secret_name: str | None, region: str) -> None:
    """The first admin's password from Secrets Manager (made by the stack), for the hub to create
    that account at start (nobody can sign up under an admin's name). Written 0600 for the hub
    user; never printed. No ec2hub:admin-password-secret tag: no file, no account."""
    path = f"{STATE}/admin_password"
    if not secret_name:
        if os.path.exists(path):
            os.remove(path)
        log("secrets", "no ec2hub:admin-password-secret tag: no admin account is created")
        return
    try:
        value = aws_client("secretsmanager", region).get_secret_value(SecretId=secret_name)["SecretString"]
    except aws_errors() as exc:
        die("secrets", f"GetSecretValue {shown(secret_name)} (the admin password): {type(exc).__name__}")
    changed = write_if_changed(path, value + "\n", 0o600, owner=pwd.getpwnam(HUB_USER).pw_uid)
    log("secrets", f"{path} from {shown(secret_name)} {'written' if changed else 'unchanged'} (0600)")


def prestart() -> None:
    """Every start of the hub (ExecStartPre=+ of ec2hub-hub.service)."""
    imds = Imds(console).wait()
    instance_id = imds.get("meta-data/instance-id")
    region = imds.get("meta-data/placement/region")
    private_ip = imds.get("meta-data/local-ipv4")
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", region) or not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", private_ip):
        die("imds", f"unexpected region {shown(region)} or private ip {shown(private_ip)}")
    log("imds", f"instance {shown(instance_id)} in {region} at {private_ip}")
    tags = read_tags(imds, required=("ec2hub:settings-parameter",), who_sets="infra, on the hub instance,")
    log("tags", f"hub {shown(tags.get('ec2hub:hub', ''))} settings {shown(tags['ec2hub:settings-parameter'])}")

    ensure_spawner(tags.get("ec2hub:spawner-asset"), region)
    settings = ensure_settings(tags["ec2hub:settings-parameter"], region)
    ensure_config()
    ensure_host_facts(private_ip, tags.get("ec2hub:admin-user"))
    ensure_secret_file("jupyterhub_cookie_secret", lambda: secrets.token_hex(32) + "\n")
    ensure_secret_file("proxy_auth_token", lambda: secrets.token_hex(32) + "\n")
    ensure_oauth_secret(settings, region)
    ensure_admin_password(tags.get("ec2hub:admin-password-secret"), region)


def exec_foreground() -> None:
    """No systemd: the unit's ExecStart=, user, directory and Environment=, in the foreground."""
    hub = pwd.getpwnam(HUB_USER)
    command, unit_env = unit_command((SOURCES / UNIT_NAME).read_text(encoding="utf-8"))
    env = {"LANG": "C.UTF-8", **unit_env}
    argv = [
        "setpriv", f"--reuid={hub.pw_uid}", f"--regid={hub.pw_gid}", "--init-groups", "--no-new-privs", "--",
        *command,
    ]
    log("service", f"no systemd (PID 1 is not systemd): running jupyterhub as {HUB_USER} in the foreground")
    os.chdir(STATE)
    os.umask(0o077)
    os.execvpe(argv[0], argv, env)


def boot() -> None:
    """Once per instance (the user data)."""
    if not systemd_is_pid1():
        prestart()
        exec_foreground()
    # Before the hub (re)starts, so that its first lines are shipped too.
    hub_tags = read_tags(Imds(console).wait(), required=(), who_sets="infra, on the hub instance,")
    ensure_log_shipping(console, "hub", hub_tags.get("ec2hub:hub", ""))
    changed = write_if_changed(UNIT_PATH, (SOURCES / UNIT_NAME).read_text(encoding="utf-8"), 0o644)
    log("files", f"{UNIT_PATH} {'written' if changed else 'unchanged'}")
    if changed:
        run("service", ["systemctl", "daemon-reload"])
    run("service", ["systemctl", "enable", UNIT_NAME])
    # restart: a second run of the user data re-applies everything (its ExecStartPre= does);
    # notebooks survive hub restarts (cleanup_servers = False).
    run("service", ["systemctl", "restart", UNIT_NAME])
    log("service", f"{UNIT_NAME} (re)started")


COMMANDS = {"boot": boot, "prestart": prestart}


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        die("usage", f"python -m ec2hub_bootstrap.hub {{{'|'.join(COMMANDS)}}}")
    COMMANDS[argv[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])
