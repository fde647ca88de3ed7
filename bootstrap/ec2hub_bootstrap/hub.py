"""ec2hub hub launcher: IMDS tags -> spawner package, settings, config, host facts, kept secrets.

Run with /opt/ec2hub/venv's Python as ``python -m ec2hub_bootstrap.hub <command>`` (PYTHONPATH
/opt/ec2hub/bootstrap), as root:

``boot``      once per instance, from the user data (user-data.sh): install the unit and, with
              systemd as PID 1, (re)start it, then, once the hub answers through its proxy,
              signal the hub's Auto Scaling group to CloudFormation (tag ``ec2hub:cfn-signal``:
              the group's creation and a deploy's replacing update wait for it); without
              systemd (a container) ``prestart`` here, then the hub in the foreground as its
              unit would run it.
``watch-settings``  the settings watcher (ec2hub-settings-watch.service): every
              :data:`SETTINGS_POLL_S` it reads the settings parameter and, when it is not the
              document the hub started with (a deploy changed the settings), restarts the hub,
              whose every-start step applies it. Notebook servers keep running.
``prestart``  on every start of the hub (the unit's ExecStartPre=+): fetch and re-apply the
              settings parameter, the spawner package (when its tag names a new one) and the
              config, idempotently, and fetch the hub's state secrets (its database's URL, the
              cookie secret, the proxy token) from Secrets Manager into the service's environment
              file (:data:`ENV_FILE`, on /run: never on disk, never logged); last, point the hub
              API's stable name (Route 53, settings ``hub_dns_name``) at this host. Nothing the
              hub must keep is on this host: the database is RDS (docs/ARCHITECTURE.md §10).

Tag values are checked here and written as JSON or passed as argv; none reaches a shell.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pwd
import re
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
# The hub service's secrets, as its unit's EnvironmentFile= (read by systemd as root, before each
# command, so ExecStartPre= writes it for ExecStart=). /run is a tmpfs: gone at power-off.
ENV_FILE = "/run/ec2hub/hub.env"
# Hub tags naming the state secrets (infra/state.py), and the variable each one becomes:
# JupyterHub reads JPY_COOKIE_SECRET (hex), ConfigurableHTTPProxy CONFIGPROXY_AUTH_TOKEN, and the
# hub's config EC2HUB_DB_URL.
STATE_SECRETS = {
    "ec2hub:database-secret": "EC2HUB_DB_URL",
    "ec2hub:cookie-secret": "JPY_COOKIE_SECRET",
    "ec2hub:proxy-token-secret": "CONFIGPROXY_AUTH_TOKEN",
}
# Files an older hub kept in its state directory; the secrets manager holds them now.
RETIRED_FILES = ("jupyterhub_cookie_secret", "proxy_auth_token")
# RDS for PostgreSQL 15+ refuses unencrypted connections (rds.force_ssl = 1 by default).
DATABASE_SSLMODE = "require"
# The spawner asset (s3://...) installed last, so a new one is installed on the next start.
SPAWNER_RECORD = "/opt/ec2hub/spawner-asset.installed"
# "<stack name>/<logical id>" of the hub's Auto Scaling group (infra/hub.py), which CloudFormation
# waits for a signal from; how long the first boot waits for its hub to answer before it signals
# FAILURE (under the group's 20-minute signal timeout, so CloudFormation hears the reason).
SIGNAL_TAG = "ec2hub:cfn-signal"
SIGNAL_WAIT_S = 15 * 60
# The settings document the hub started with (written by prestart), which the settings watcher
# compares with the parameter every SETTINGS_POLL_S: a deploy's change reaches the hub within a minute.
SETTINGS_FILE = f"{ETC}/settings.json"
SETTINGS_POLL_S = 15
WATCH_UNIT_NAME = "ec2hub-settings-watch.service"
# The hub's own restart requests (a lease takeover; ec2spawner's lease_restart_request).
RESTART_PATH_UNIT, RESTART_UNIT = "ec2hub-hub-restart.path", "ec2hub-hub-restart.service"
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
        parameter = aws_client("ssm", region).get_parameter(Name=name)["Parameter"]
    except aws_errors() as exc:  # say what to fix
        die("settings", f"GetParameter {name}: {exc}")
    value, version = parameter["Value"], parameter["Version"]
    try:
        settings = HubSettings.model_validate_json(value)
    except ValueError as exc:
        die("settings", f"{name} is not a valid hub settings document: {exc}")
    changed = write_if_changed(SETTINGS_FILE, value, 0o644)
    log("settings", f"{SETTINGS_FILE} from {name} version {version} {'written' if changed else 'unchanged'} "
        f"(hub {settings.hub_id}, {len(settings.classes)} classes, auth {settings.auth.type})")
    return settings


def settings_changed(name: str, region: str) -> int | None:
    """The settings parameter's version when its document is not the one the hub started with
    (:data:`SETTINGS_FILE`, which the every-start step writes byte for byte), else None (also when
    it cannot be read now: the next poll asks again). The document is compared, not the version:
    a parameter made again has version 1 again."""
    try:
        parameter = aws_client("ssm", region).get_parameter(Name=name)["Parameter"]
    except aws_errors() as exc:
        log("settings", f"watch: GetParameter {name}: {exc}")
        return None
    try:
        applied = Path(SETTINGS_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None  # the hub has not started yet: its start applies the newest
    return parameter["Version"] if parameter["Value"] != applied else None


def ensure_config() -> None:
    changed = write_if_changed(f"{ETC}/jupyterhub_config.py",
                               (SOURCES / "jupyterhub_config.py").read_text(encoding="utf-8"), 0o644)
    log("files", f"{ETC}/jupyterhub_config.py {'written' if changed else 'unchanged'}")


def ensure_host_facts(private_ip: str, admin_user: str | None) -> None:
    facts = {"private_ip": private_ip, "admin_user": admin_user or None}
    changed = write_if_changed(f"{ETC}/host.json", json.dumps(facts, indent=2) + "\n", 0o644)
    log("host", f"{ETC}/host.json {'written' if changed else 'unchanged'} (private ip {private_ip}, "
        f"admin {shown(admin_user) if admin_user else 'none'})")


def database_url(secret: dict) -> str:
    """The SQLAlchemy URL of the hub database from its RDS secret (``username``, ``password``,
    ``host``, ``port``, ``dbname``: what RDS's secret attachment writes), psycopg 3, TLS required."""
    from sqlalchemy.engine import URL

    try:
        return URL.create(
            "postgresql+psycopg",
            username=secret["username"],
            password=secret["password"],
            host=secret["host"],
            port=int(secret["port"]),
            database=secret["dbname"],
            query={"sslmode": DATABASE_SSLMODE},
        ).render_as_string(hide_password=False)
    except (KeyError, TypeError, ValueError) as exc:
        # Never the value: the secret's keys only.
        raise ValueError(f"needs username, password, host, port and dbname; has {sorted(secret)} ({exc!r})") from None


def hex_secret(value: str) -> str:
    """A cookie secret or proxy token: 64 hex digits (32 bytes), as the stack generates them."""
    value = value.strip()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"is not 64 hex digits ({len(value)} characters)")
    return value


def environment_file(values: dict[str, str]) -> str:
    """systemd.exec(5) EnvironmentFile= text: one ``KEY="value"`` a line, quoted for systemd.
    Values are checked before (hex, or a URL of letters, digits and URL punctuation)."""
    for key, value in values.items():
        if any(c in value for c in '"\\\n$`'):
            raise ValueError(f"{key}: a character systemd would unquote")
    return "".join(f'{key}="{value}"\n' for key, value in sorted(values.items()))


def read_environment_file(text: str) -> dict[str, str]:
    """The inverse of :func:`environment_file` (for running the hub without systemd)."""
    env = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        env[key] = value.removeprefix('"').removesuffix('"')
    return env


def ensure_state_secrets(tags: dict[str, str], region: str) -> None:
    """The database URL, cookie secret and proxy token from Secrets Manager into :data:`ENV_FILE`
    (root, 0600), on every start: a replaced hub host gets the same ones. Never printed."""
    missing = [tag for tag in STATE_SECRETS if not tags.get(tag)]
    if missing:
        die("secrets", f"no {', '.join(missing)} tag on this instance: infra names the hub's state "
            "secrets (database, cookie secret, proxy token) in its tags")
    sm = aws_client("secretsmanager", region)
    values = {}
    for tag, variable in STATE_SECRETS.items():
        name = tags[tag]
        try:
            text = sm.get_secret_value(SecretId=name)["SecretString"]
        except aws_errors() as exc:
            die("secrets", f"GetSecretValue {shown(name)} ({tag}): {type(exc).__name__}")
        try:
            values[variable] = database_url(json.loads(text)) if variable == "EC2HUB_DB_URL" else hex_secret(text)
        except ValueError as exc:  # json.JSONDecodeError too; the messages name no value
            die("secrets", f"{shown(name)} ({tag}) {exc if not isinstance(exc, json.JSONDecodeError) else 'is not JSON'}")
    os.makedirs(os.path.dirname(ENV_FILE), mode=0o700, exist_ok=True)
    changed = write_if_changed(ENV_FILE, environment_file(values), 0o600)
    log("secrets", f"{ENV_FILE} {'written' if changed else 'unchanged'} (0600, root): the database URL, "
        f"cookie secret and proxy token from {', '.join(shown(tags[t]) for t in STATE_SECRETS)}")
    for name in RETIRED_FILES:
        path = f"{STATE}/{name}"
        if os.path.exists(path):
            os.remove(path)
            log("secrets", f"{path} removed (kept in Secrets Manager now)")


def fetch_operator_secret(name: str | None, path: str, what: str, output: str, region: str,
                          check=None) -> str | None:
    """A secret the stack made with a placeholder and the operator fills (``what``: what belongs
    there; ``output``: the stack output that says how), fetched at every start into ``path``
    (0600, the hub user's), which only the hub config reads: not an environment variable, which
    the hub's children (the proxy) would inherit. No ``name``: the file is removed. While the
    secret holds the placeholder, or ``check(value)`` names what is wrong with it, the hub does
    not start, with a line that says what to put there; systemd retries, so the hub starts once
    it is there. The value is never printed. Returns it."""
    from ec2spawner.settings import OAUTH_SECRET_PLACEHOLDER_KEY

    if not name:
        if os.path.exists(path):
            os.remove(path)
        return None
    try:
        value = aws_client("secretsmanager", region).get_secret_value(SecretId=name)["SecretString"]
    except aws_errors() as exc:
        die("secrets", f"GetSecretValue {shown(name)} ({what}): {type(exc).__name__}")
    if OAUTH_SECRET_PLACEHOLDER_KEY in value:
        die("secrets", f"{shown(name)} still holds the stack's placeholder: put {what} there (the stack's "
            f"{output} output); the hub starts once it is there")
    wrong = check(value) if check else None
    if wrong:
        die("secrets", f"{shown(name)} is not {wrong}")
    changed = write_if_changed(path, value.strip() + "\n", 0o600, owner=pwd.getpwnam(HUB_USER).pw_uid)
    log("secrets", f"{path} from {shown(name)} {'written' if changed else 'unchanged'} (0600)")
    return value


def ensure_oauth_secret(settings, region: str) -> None:
    """The identity provider's client secret (the stack made the secret, the operator put the value)."""
    fetch_operator_secret(settings.auth.oauth_client_secret_name, f"{STATE}/oauth_client_secret",
                          f"the {settings.auth.type} client secret", "OAuthClientSecretCommand", region)


def _not_a_service_account_key(value: str) -> str | None:
    try:
        key = json.loads(value)
    except json.JSONDecodeError:
        key = None
    needed = ("type", "client_email", "private_key", "token_uri")
    if not isinstance(key, dict) or key.get("type") != "service_account" or not all(key.get(k) for k in needed):
        return ("a Google service account key (JSON with type service_account, client_email, private_key and "
                "token_uri, as the Google Cloud console downloads it)")
    return None


def ensure_google_key(settings, region: str) -> None:
    """The JSON key of the Google service account that reads Workspace groups (google with
    ``google_groups_admin``), handled as the client secret, and checked to be such a key."""
    value = fetch_operator_secret(settings.auth.google_service_account_secret_name,
                                  f"{STATE}/google_service_account.json", "the Google service account's JSON key",
                                  "GoogleServiceAccountKeyCommand", region, check=_not_a_service_account_key)
    if value is not None:
        log("secrets", f"service account {shown(json.loads(value)['client_email'])} reads Google Workspace "
            f"groups as {shown(settings.auth.google_groups_admin or '')}")


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


def hub_record_change(name: str, private_ip: str) -> dict:
    """The ChangeBatch that points ``name`` at ``private_ip``: one UPSERT of an A record, the only
    change the hub role may make (infra/dns.py), with the TTL the stack made it with."""
    from ec2spawner.settings import HUB_DNS_TTL_S

    return {
        "Comment": "ec2hub: the hub API is on this host",
        "Changes": [{
            "Action": "UPSERT",
            "ResourceRecordSet": {
                "Name": name, "Type": "A", "TTL": HUB_DNS_TTL_S, "ResourceRecords": [{"Value": private_ip}],
            },
        }],
    }


def live_lease_holder(settings, region: str, unreadable: str) -> tuple[bool, str | None]:
    """(read, holder): whether the hub lease could be read, and the host that holds it while it is
    live (None: free or expired). The holder is the hub host's instance id (ec2spawner.lease). A
    failed read is logged as ``unreadable`` with the error."""
    import time

    from ec2spawner.payloads import lease_read_params

    try:
        item = aws_client("dynamodb", region).get_item(
            **lease_read_params(table=settings.lease_table, hub_id=settings.hub_id)).get("Item") or {}
    except aws_errors() as exc:
        log("dns", unreadable.format(exc))
        return False, None
    live = item and float(item["expires_at"]["N"]) > time.time()
    return True, item["holder"]["S"] if live else None


def other_lease_holder(settings, instance_id: str, region: str) -> str | None:
    """The host that holds the hub lease now when it is not this one, else None (no lease table, no
    live lease, this host's, or the lease cannot be read: a hub whose name points elsewhere would be
    unreachable for every server, so the name is then claimed as before)."""
    if not settings.lease_table:
        return None
    _, holder = live_lease_holder(settings, region, "the hub lease cannot be read ({}): claiming the name all the same")
    return holder if holder != instance_id else None


def ensure_hub_record(settings, private_ip: str, region: str, instance_id: str | None = None) -> bool:
    """The hub API's stable name (``hub_dns_name`` in the private zone ``hub_dns_zone_id``) points
    at this host, on every start, before the hub starts: notebook servers call the hub at that name.

    botocore retries throttling (Route 53's PriorRequestNotComplete included) and unreachable
    endpoints (standard mode, 8 attempts). A failure after that fails this start: systemd starts
    the unit again 5 s later (Restart=always). A hub that runs while its name points elsewhere
    would be unreachable for every server, with nothing in its own log; a failed unit is seen.
    The change is not waited for (INSYNC, usually within a minute): nothing on this host resolves
    the name (the proxy reaches the hub at its IP), and servers find the new address once it is."""
    name, zone = settings.hub_dns_name, settings.hub_dns_zone_id
    if not name:
        log("dns", "the settings name no hub_dns_name: servers are told this host's private ip, "
            "which a replacement host does not keep")
        return False
    # The name follows the lease: while another host's hub holds it (a replacement under way),
    # that hub keeps the name, and this host claims it when its hub takes the lease (the watcher).
    if instance_id and (holder := other_lease_holder(settings, instance_id, region)):
        log("dns", f"{name} stays with {holder}, which holds the hub lease: this host claims it once "
            "its hub takes the lease")
        return False
    change = hub_record_change(name, private_ip)
    try:
        answer = aws_client("route53", region).change_resource_record_sets(HostedZoneId=zone, ChangeBatch=change)
    except aws_errors() as exc:
        die("dns", f"UPSERT {name} A {private_ip} in hosted zone {zone} failed: {exc}; the hub starts once "
            "it succeeds (systemd tries again; infra/dns.py makes the zone and allows the hub role this change)")
    ttl = change["Changes"][0]["ResourceRecordSet"]["TTL"]
    log("dns", f"{name} A {private_ip} (ttl {ttl} s) upserted in hosted zone {zone}: {answer['ChangeInfo']['Status']}")
    return True


def hub_answers(url: str) -> bool:
    """True once ``url`` (the hub's API through its proxy) answers 200."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def signal_group(tags: dict[str, str], instance_id: str, region: str, *, url: str,
                 wait_s: float = SIGNAL_WAIT_S, interval_s: float = 2.0) -> str | None:
    """Tell CloudFormation whether this host's hub answers (``SignalResource`` SUCCESS once ``url``
    answers 200, FAILURE if it does not within ``wait_s``), for the group the ``ec2hub:cfn-signal``
    tag names; returns the status sent, None when there is nothing to signal or the call failed.

    Never fatal: a hub that runs is worth keeping even if CloudFormation did not hear it (the
    group's signal timeout then fails the deploy, visibly, and rolls back to the old group)."""
    import time

    target = tags.get(SIGNAL_TAG, "")
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9-]{0,127})/([A-Za-z0-9]{1,255})", target)
    if not match:
        log("signal", f"no usable {SIGNAL_TAG} tag ({shown(target)}): nothing to signal")
        return None
    stack, logical_id = match.groups()
    deadline = time.monotonic() + wait_s
    while not (ok := hub_answers(url)) and time.monotonic() < deadline:
        time.sleep(interval_s)
    status = "SUCCESS" if ok else "FAILURE"
    try:
        aws_client("cloudformation", region).signal_resource(
            StackName=stack, LogicalResourceId=logical_id, UniqueId=instance_id, Status=status)
    except aws_errors() as exc:
        log("signal", f"SignalResource {status} for {stack}/{logical_id} failed: {exc}; CloudFormation "
            "times the group out instead")
        return None
    log("signal", f"{stack}/{logical_id}: {status} ({'the hub answers at ' + url if ok else f'no answer at {url} within {wait_s:.0f} s'})")
    return status


def claim_name_with_lease(settings, instance_id: str, private_ip: str, region: str, claimed: bool) -> bool:
    """Point the hub API's name at this host once its hub holds the lease (after a replacement,
    whose every-start step left the name with the old hub, or after another host claimed it back);
    returns whether this host has claimed it while holding the lease. Once per holding."""
    if not (settings.lease_table and settings.hub_dns_name):
        return claimed
    read, holder = live_lease_holder(settings, region, "watch: the hub lease cannot be read ({})")
    if not read:
        return claimed
    if holder != instance_id:
        return False
    if claimed:
        return True
    try:
        return ensure_hub_record(settings, private_ip, region, instance_id)
    except SystemExit:  # the UPSERT failed, said why: the next poll tries again
        return False


def watch_settings() -> None:
    """Restart the hub when a deploy changed its settings, and claim the hub API's name when this
    host's hub takes the lease (ec2hub-settings-watch.service)."""
    import time

    from ec2spawner.settings import HubSettings

    imds = Imds(console).wait()
    region = imds.get("meta-data/placement/region")
    instance_id, private_ip = imds.get("meta-data/instance-id"), imds.get("meta-data/local-ipv4")
    name = read_tags(imds, required=("ec2hub:settings-parameter",), who_sets="infra, on the hub instance,")[
        "ec2hub:settings-parameter"]
    log("settings", f"watch: {name} every {SETTINGS_POLL_S} s")
    claimed = False
    while True:
        time.sleep(SETTINGS_POLL_S)
        try:
            settings = HubSettings.model_validate_json(Path(SETTINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the hub has not started yet
        claimed = claim_name_with_lease(settings, instance_id, private_ip, region, claimed)
        version = settings_changed(name, region)
        if version is None:
            continue
        log("settings", f"watch: {name} version {version} is not the document the hub started with: "
            f"restarting {UNIT_NAME} to apply it (notebook servers keep running)")
        proc = subprocess.run(["systemctl", "restart", UNIT_NAME], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log("settings", f"watch: systemctl restart {UNIT_NAME} failed ({proc.returncode}): {proc.stderr.strip()}")


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
    ensure_state_secrets(tags, region)
    ensure_oauth_secret(settings, region)
    ensure_google_key(settings, region)
    ensure_admin_password(tags.get("ec2hub:admin-password-secret"), region)
    ensure_hub_record(settings, private_ip, region, instance_id)


def exec_foreground() -> None:
    """No systemd: the unit's ExecStart=, user, directory and Environment=, in the foreground."""
    hub = pwd.getpwnam(HUB_USER)
    command, unit_env = unit_command((SOURCES / UNIT_NAME).read_text(encoding="utf-8"))
    with open(ENV_FILE, encoding="utf-8") as f:  # the unit's EnvironmentFile=
        env = {"LANG": "C.UTF-8", **unit_env, **read_environment_file(f.read())}
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
    changed = False
    for unit in (UNIT_NAME, WATCH_UNIT_NAME, RESTART_PATH_UNIT, RESTART_UNIT):
        path = f"/etc/systemd/system/{unit}"
        written = write_if_changed(path, (SOURCES / unit).read_text(encoding="utf-8"), 0o644)
        log("files", f"{path} {'written' if written else 'unchanged'}")
        changed = changed or written
    if changed:
        run("service", ["systemctl", "daemon-reload"])
    run("service", ["systemctl", "enable", UNIT_NAME, WATCH_UNIT_NAME, RESTART_PATH_UNIT])
    # restart: a second run of the user data re-applies everything (its ExecStartPre= does);
    # notebooks survive hub restarts (cleanup_servers = False).
    run("service", ["systemctl", "restart", UNIT_NAME])
    log("service", f"{UNIT_NAME} (re)started")
    run("service", ["systemctl", "restart", WATCH_UNIT_NAME, RESTART_PATH_UNIT])
    if not hub_tags.get(SIGNAL_TAG):
        log("signal", f"no {SIGNAL_TAG} tag: no Auto Scaling group waits for this host's signal")
        return
    imds = Imds(console).wait()
    from ec2spawner.settings import HubSettings

    # Written by the unit's every-start step, which `systemctl restart` above ran to its end.
    settings = HubSettings.model_validate_json(Path(f"{ETC}/settings.json").read_text(encoding="utf-8"))
    signal_group(hub_tags, imds.get("meta-data/instance-id"), imds.get("meta-data/placement/region"),
                 url=f"http://127.0.0.1:{settings.proxy_port}/hub/api/")


COMMANDS = {"boot": boot, "prestart": prestart, "watch-settings": watch_settings}


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        die("usage", f"python -m ec2hub_bootstrap.hub {{{'|'.join(COMMANDS)}}}")
    COMMANDS[argv[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])
