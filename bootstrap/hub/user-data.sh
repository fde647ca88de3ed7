#!/bin/bash
# ec2hub hub host bootstrap: the EC2 user data of the hub instance.
#
# infra puts these exact bytes in the hub instance; nothing is templated in. Runs as root at first
# boot (cloud-init); safe to run again: every step is an idempotent ensure_* that says what it found
# or did, and secrets made once (cookie secret, proxy token) are kept.
#
# Inputs (nothing else):
#   IMDSv2 http://169.254.169.254     instance id, region, private IP, and the instance's tags
#                                     (metadata tags enabled; docs/ARCHITECTURE.md §5):
#     ec2hub:hub                  hub id (the CloudFormation stack name), logged
#     ec2hub:settings-parameter   SSM String parameter holding the HubSettings JSON
#     ec2hub:spawner-asset        s3://bucket/key.zip, the spawner package (a CDK asset); not
#                                 fetched when /opt/ec2hub/venv already has ec2spawner (baked AMI)
#     ec2hub:admin-user           optional: JupyterHub admin (with native auth: signs up, is authorized)
#   SSM settings.auth.oauth_client_secret_parameter   only with an OAuth authenticator
#   AWS access: the instance role (credentials via IMDS), botocore standard retries, endpoints from
#   botocore's normal configuration.
#
# Outputs:
#   /opt/ec2hub/venv              JupyterHub 6.1.1, idle culler, authenticators, boto3, ec2spawner
#   /opt/ec2hub/node/bin          node + configurable-http-proxy 5.3.0 (kept if the AMI has them)
#   /etc/ec2hub/settings.json     the settings document (0644, nothing secret)
#   /etc/ec2hub/host.json         private IP and admin user for the config (0644)
#   /etc/ec2hub/jupyterhub_config.py   the thin config (bootstrap/hub/jupyterhub_config.py)
#   /var/lib/ec2hub/              hub state, owned by the system user ec2hub, 0700:
#                                 jupyterhub_cookie_secret and proxy_auth_token (0600, kept)
#   ec2hub-hub.service            hardened unit (bootstrap/hub/ec2hub-hub.service); without systemd
#                                 as PID 1 (a container, the local sandbox) the hub runs in the
#                                 foreground with the same user, directory and environment
#   console output                one line per step, "ec2hub-hub: <step>: ..."; no secret printed
#
# OS assumptions: Linux with bash, coreutils, util-linux (setpriv), shadow-utils (useradd); Amazon
# Linux 2023 (dnf) or Debian/Ubuntu (apt-get) when Python or Node.js must be installed.
#
# Security: tag values are data, never code. This shell part reads no tag: the embedded Python
# launcher reads them, checks them and writes JSON; commands get values as argv, never via a shell.
set -euo pipefail
umask 022

readonly VENV=/opt/ec2hub/venv
readonly NODE_BIN=/opt/ec2hub/node/bin
readonly ETC=/etc/ec2hub
readonly STATE=/var/lib/ec2hub
readonly LAUNCHER=/opt/ec2hub/bin/ec2hub-hub-launch.py
readonly UNIT=ec2hub-hub.service
readonly HUB_USER=ec2hub
# Pinned to the repository's requirements.txt.
readonly PACKAGES=(
  jupyterhub==6.1.1 jupyterhub-idle-culler==2.0.0 jupyterhub-nativeauthenticator==1.3.0
  oauthenticator==17.4.0 boto3==1.44.8 botocore==1.44.8 pydantic==2.14.3 PyYAML==6.0.3
)
readonly PROXY_VERSION=5.3.0

log() { printf 'ec2hub-hub: %s: %s\n' "$1" "$2"; }
die() { log "$1" "ERROR: $2" >&2; exit 1; }

find_python() {
  local candidate
  for candidate in python3.12 python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

ensure_python() {
  if PYTHON=$(find_python); then
    log python "using $PYTHON"
    return
  fi
  log python "no Python >= 3.10 on the AMI; installing python3.11"
  if command -v dnf >/dev/null 2>&1; then
    dnf install -y -q python3.11 python3.11-pip
  elif command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
  fi
  PYTHON=$(find_python) || die python "no Python >= 3.10 and none could be installed: use an AMI with python3.11"
}

# JupyterHub, the culler, the authenticators and boto3; kept when present (a baked AMI).
ensure_venv() {
  if [[ -x $VENV/bin/jupyterhub ]] && "$VENV/bin/python" -c 'import boto3, jupyterhub_idle_culler' 2>/dev/null; then
    log venv "$VENV has jupyterhub, the idle culler and boto3"
    return
  fi
  ensure_python
  log venv "creating $VENV with ${PACKAGES[*]}"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "${PACKAGES[@]}" ||
    die venv "pip install failed: the hub needs a route to PyPI (NAT or a mirror) or a baked AMI with $VENV"
  log venv "installed"
}

# configurable-http-proxy (Node.js): /opt/ec2hub/node/bin, else on PATH, else installed there.
ensure_proxy() {
  if [[ -x $NODE_BIN/configurable-http-proxy && -x $NODE_BIN/node ]]; then
    log proxy "$NODE_BIN has node and configurable-http-proxy"
    return
  fi
  mkdir -p "$NODE_BIN"
  if command -v configurable-http-proxy >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
    ln -sfn "$(command -v configurable-http-proxy)" "$NODE_BIN/configurable-http-proxy"
    ln -sfn "$(command -v node)" "$NODE_BIN/node"
    log proxy "using $(command -v configurable-http-proxy) from PATH"
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    log proxy "installing Node.js"
    if command -v dnf >/dev/null 2>&1; then
      dnf install -y -q nodejs22 nodejs22-npm || dnf install -y -q nodejs npm
    elif command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
    fi
    command -v npm >/dev/null 2>&1 || die proxy "no npm and none could be installed: use an AMI with Node.js >= 20"
  fi
  npm install --global --prefix /opt/ec2hub/node --no-audit --no-fund "configurable-http-proxy@$PROXY_VERSION" ||
    die proxy "npm install configurable-http-proxy failed: the hub needs a route to the npm registry or a baked AMI"
  ln -sfn "$(command -v node)" "$NODE_BIN/node"
  log proxy "installed configurable-http-proxy $PROXY_VERSION"
}

# The system user the hub runs as, and its state directory.
ensure_hub_user() {
  if id -u "$HUB_USER" >/dev/null 2>&1; then
    log user "$HUB_USER exists"
  else
    useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin "$HUB_USER"
    log user "created system user $HUB_USER"
  fi
  install -d -m 0700 -o "$HUB_USER" -g "$HUB_USER" "$STATE"
  install -d -m 0755 -o root -g root "$ETC"
}

# install_file DEST MODE < content: replace DEST only when the content differs.
install_file() {
  local dest=$1 mode=$2 tmp
  tmp=$(mktemp "$dest.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"
    chmod "$mode" "$dest"
    log files "$dest unchanged"
  else
    mv -f "$tmp" "$dest"
    log files "$dest written"
  fi
}

ensure_config() {
  install_file "$ETC/jupyterhub_config.py" 0644 <<'EC2HUB_JUPYTERHUB_CONFIG'
# ec2hub: JupyterHub configuration of the hub host. Thin on purpose: every platform value comes
# from the settings document (/etc/ec2hub/settings.json, written by bootstrap/hub/user-data.sh from
# the SSM parameter infra made) and ec2spawner.hubconfig.apply_settings turns it into config.
#
# This file is the source of truth; bootstrap/hub/user-data.sh embeds a byte-identical copy
# (tests/bootstrap/test_hub.py checks) and installs it as /etc/ec2hub/jupyterhub_config.py.
#
# Inputs written by the hub user data:
#   /etc/ec2hub/settings.json          HubSettings (nothing secret)
#   /etc/ec2hub/host.json              {"private_ip", "admin_user"} from IMDS and tags
#   /etc/ec2hub/allow-dummy-auth       present only in the local sandbox's image
#   /var/lib/ec2hub/proxy_auth_token   hub <-> configurable-http-proxy token (0600, kept)
#   /var/lib/ec2hub/jupyterhub_cookie_secret                                (0600, kept)
#   /var/lib/ec2hub/oauth_client_secret  only with an OAuth authenticator   (0600)
import json
import sys
from pathlib import Path

from ec2spawner.hubconfig import apply_settings
from ec2spawner.settings import HubSettings

ETC = Path("/etc/ec2hub")
STATE = Path("/var/lib/ec2hub")

c = get_config()  # noqa: F821 (JupyterHub provides it)

settings = HubSettings.load(ETC / "settings.json")
host = json.loads((ETC / "host.json").read_text(encoding="utf-8"))

# DummyAuthenticator accepts any password: refuse it unless this host's image allows it (only the
# local sandbox's image has the marker file; nothing in AWS writes it).
if settings.auth.type == "dummy" and not (ETC / "allow-dummy-auth").exists():
    sys.exit("ec2hub: settings ask for the dummy authenticator, which is for the local sandbox only")

client_secret_file = STATE / "oauth_client_secret"
apply_settings(
    c,
    settings,
    hub_connect_ip=host["private_ip"],
    oauth_client_secret=(
        client_secret_file.read_text(encoding="utf-8").strip() if client_secret_file.exists() else None
    ),
    python=sys.executable,
)
if host.get("admin_user"):
    # The admin named by the hub instance's ec2hub:admin-user tag (with native auth: they sign up
    # under this name and are authorized at once).
    c.Authenticator.admin_users = set(c.Authenticator.admin_users) | {host["admin_user"]}

# State kept across restarts of the hub (and its host), never in the working directory.
c.JupyterHub.db_url = f"sqlite:///{STATE}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.auth_token = (STATE / "proxy_auth_token").read_text(encoding="utf-8").strip()
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")
# Notebooks run on their own instances: a hub restart must not stop them (also set by apply_settings;
# restated here because losing it would stop every user's server on each hub restart).
c.JupyterHub.cleanup_servers = False
EC2HUB_JUPYTERHUB_CONFIG
}

# Everything that reads a tag or talks to AWS. Quoted heredoc: nothing expands.
ensure_launcher() {
  mkdir -p "$(dirname "$LAUNCHER")"
  install_file "$LAUNCHER" 0755 <<'EC2HUB_LAUNCHER'
"""ec2hub hub launcher: IMDS tags -> spawner package, settings, host facts, kept secrets.

Written by the hub user data (bootstrap/hub/user-data.sh), which is the source of truth. Runs with
/opt/ec2hub/venv's Python (standard library + boto3). Tag values are checked here and written as
JSON or passed as argv; none reaches a shell.
"""

import importlib
import importlib.util
import json
import os
import pwd
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile

IMDS = "http://169.254.169.254"
VENV = "/opt/ec2hub/venv"
ETC = "/etc/ec2hub"
STATE = "/var/lib/ec2hub"
HUB_USER = "ec2hub"
IMDS_WAIT_S = 300


def log(step, message):
    print(f"ec2hub-hub: {step}: {message}", flush=True)


def die(step, message):
    print(f"ec2hub-hub: {step}: ERROR: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


class Imds:
    def __init__(self):
        self.token = None

    def _token(self):
        request = urllib.request.Request(
            IMDS + "/latest/api/token", method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
        )
        with urllib.request.urlopen(request, timeout=2) as resp:
            return resp.read().decode()

    def wait(self):
        deadline, delay = time.monotonic() + IMDS_WAIT_S, 0.2
        while True:
            try:
                self.token = self._token()
                return
            except (OSError, urllib.error.URLError) as exc:
                if time.monotonic() > deadline:
                    die("imds", f"no IMDSv2 at {IMDS} after {IMDS_WAIT_S}s ({exc})")
                time.sleep(delay)
                delay = min(delay * 2, 5)

    def get(self, path, missing_ok=False):
        request = urllib.request.Request(f"{IMDS}/latest/{path}", headers={"X-aws-ec2-metadata-token": self.token})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            if exc.code == 401:
                self.token = self._token()
                return self.get(path, missing_ok)
            raise


def read_tags(imds):
    keys = imds.get("meta-data/tags/instance", missing_ok=True)
    if keys is None:
        die("tags", "instance metadata tags are off: the hub instance needs "
            "MetadataOptions.InstanceMetadataTags=enabled")
    tags = {}
    for key in keys.splitlines():
        if key.startswith("ec2hub:"):
            tags[key] = imds.get("meta-data/tags/instance/" + urllib.parse.quote(key, safe=":"))
    if not tags.get("ec2hub:settings-parameter"):
        die("tags", "tag ec2hub:settings-parameter is missing: infra sets it on the hub instance")
    return tags


def aws_client(service, region):
    import boto3
    import botocore.config

    return boto3.client(
        service, region_name=region,
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 8}),
    )


def ensure_spawner(asset, region):
    if importlib.util.find_spec("ec2spawner") is not None:
        log("spawner", f"{VENV} has ec2spawner")
        return
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/([A-Za-z0-9!_.*'()/-]+\.zip)", asset or "")
    if not match:
        die("spawner", f"no ec2spawner in {VENV} and tag ec2hub:spawner-asset {ascii(asset)} is not s3://bucket/key.zip")
    archive = "/opt/ec2hub/spawner-asset.zip"
    source = "/opt/ec2hub/spawner-src"
    aws_client("s3", region).download_file(match.group(1), match.group(2), archive)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(source)  # zipfile drops absolute and ".." parts of member names
    result = subprocess.run(
        [f"{VENV}/bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if result.returncode != 0:
        die("spawner", f"pip install of the spawner asset failed: {result.stdout[-2000:]}")
    importlib.invalidate_caches()
    log("spawner", f"installed ec2spawner from {asset}")


def write_if_changed(path, text, mode, owner=0):
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                os.chmod(path, mode)
                os.chown(path, owner, owner if owner == 0 else pwd.getpwuid(owner).pw_gid)
                return False
    except FileNotFoundError:
        pass
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.chown(tmp, owner, owner if owner == 0 else pwd.getpwuid(owner).pw_gid)
    os.replace(tmp, path)
    return True


def ensure_settings(name, region):
    from ec2spawner.settings import HubSettings

    try:
        value = aws_client("ssm", region).get_parameter(Name=name)["Parameter"]["Value"]
    except Exception as exc:  # botocore ClientError or endpoint errors: say what to fix
        die("settings", f"GetParameter {name}: {exc}")
    try:
        settings = HubSettings.model_validate_json(value)
    except ValueError as exc:
        die("settings", f"{name} is not a valid hub settings document: {exc}")
    changed = write_if_changed(f"{ETC}/settings.json", value, 0o644)
    log("settings", f"{ETC}/settings.json from {name} {'written' if changed else 'unchanged'} "
        f"(hub {settings.hub_id}, {len(settings.classes)} classes, auth {settings.auth.type})")
    return settings


def ensure_host_facts(private_ip, admin_user):
    facts = {"private_ip": private_ip, "admin_user": admin_user or None}
    changed = write_if_changed(f"{ETC}/host.json", json.dumps(facts, indent=2) + "\n", 0o644)
    log("host", f"{ETC}/host.json {'written' if changed else 'unchanged'} (private ip {private_ip}, "
        f"admin {ascii(admin_user) if admin_user else 'none'})")


def ensure_secret_file(name, make):
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


def ensure_oauth_secret(settings, region):
    name = settings.auth.oauth_client_secret_parameter
    path = f"{STATE}/oauth_client_secret"
    if not name:
        if os.path.exists(path):
            os.remove(path)
        return
    try:
        value = aws_client("ssm", region).get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except Exception as exc:
        die("secrets", f"GetParameter {name} (OAuth client secret): {type(exc).__name__}")
    changed = write_if_changed(path, value + "\n", 0o600, owner=pwd.getpwnam(HUB_USER).pw_uid)
    log("secrets", f"{path} from {name} {'written' if changed else 'unchanged'} (0600)")


def main():
    imds = Imds()
    imds.wait()
    instance_id = imds.get("meta-data/instance-id")
    region = imds.get("meta-data/placement/region")
    private_ip = imds.get("meta-data/local-ipv4")
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", region) or not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", private_ip):
        die("imds", f"unexpected region {ascii(region)} or private ip {ascii(private_ip)}")
    log("imds", f"instance {ascii(instance_id)} in {region} at {private_ip}")
    tags = read_tags(imds)
    log("tags", f"hub {ascii(tags.get('ec2hub:hub', ''))} settings {ascii(tags['ec2hub:settings-parameter'])}")

    ensure_spawner(tags.get("ec2hub:spawner-asset"), region)
    settings = ensure_settings(tags["ec2hub:settings-parameter"], region)
    ensure_host_facts(private_ip, tags.get("ec2hub:admin-user"))
    ensure_secret_file("jupyterhub_cookie_secret", lambda: secrets.token_hex(32) + "\n")
    ensure_secret_file("proxy_auth_token", lambda: secrets.token_hex(32) + "\n")
    ensure_oauth_secret(settings, region)


if __name__ == "__main__":
    main()
EC2HUB_LAUNCHER
}

ensure_service_unit() {
  install_file "/etc/systemd/system/$UNIT" 0644 <<'EC2HUB_UNIT'
# ec2hub: JupyterHub on the hub host, with the configurable-http-proxy it starts and the
# hub-managed services its config defines (the idle culler). Installed by bootstrap/hub/user-data.sh,
# which embeds a byte-identical copy of this file.
[Unit]
Description=ec2hub JupyterHub (hub, proxy, idle culler)
Documentation=https://jupyterhub.readthedocs.io/
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
# An unprivileged system user: EC2Spawner needs no local users or root, only the instance role.
User=ec2hub
Group=ec2hub
WorkingDirectory=/var/lib/ec2hub
Environment=HOME=/var/lib/ec2hub
Environment=PATH=/opt/ec2hub/venv/bin:/opt/ec2hub/node/bin:/usr/local/bin:/usr/bin:/bin
ExecStart=/opt/ec2hub/venv/bin/jupyterhub -f /etc/ec2hub/jupyterhub_config.py
# Notebooks keep running while the hub restarts (cleanup_servers = False); the hub re-attaches.
Restart=always
RestartSec=5
TimeoutStopSec=30

# Hardening (systemd.exec(5)). The hub writes only its state directory.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=/var/lib/ec2hub
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
UMask=0077
# No MemoryDenyWriteExecute: node (configurable-http-proxy) needs a JIT.

[Install]
WantedBy=multi-user.target
EC2HUB_UNIT
}

run_hub() {
  # sd_booted(3): systemd is PID 1 exactly when /run/systemd/system exists.
  if [[ -d /run/systemd/system ]]; then
    mkdir -p /etc/systemd/system
    ensure_service_unit
    systemctl daemon-reload
    systemctl enable "$UNIT" >/dev/null
    # A re-run applies new settings; notebooks survive hub restarts (cleanup_servers = False).
    systemctl restart "$UNIT"
    log service "$UNIT (re)started"
    return
  fi
  # No systemd (a container, the local sandbox): the unit's command, user, directory and
  # environment, in the foreground.
  log service "no systemd (PID 1 is not systemd): running jupyterhub as $HUB_USER in the foreground"
  cd "$STATE"
  umask 077
  exec env -i HOME="$STATE" LANG=C.UTF-8 PATH="$VENV/bin:$NODE_BIN:/usr/local/bin:/usr/bin:/bin" \
    setpriv --reuid="$HUB_USER" --regid="$HUB_USER" --init-groups --no-new-privs -- \
    "$VENV/bin/jupyterhub" -f "$ETC/jupyterhub_config.py"
}

main() {
  log start "ec2hub hub bootstrap"
  ensure_venv
  ensure_proxy
  ensure_hub_user
  ensure_launcher
  # HOME for botocore's ~/.aws/config; cloud-init may leave it unset.
  HOME=/root "$VENV/bin/python" "$LAUNCHER"
  ensure_config
  run_hub
}

main "$@"
