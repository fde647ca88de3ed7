#!/bin/bash
# ec2hub hub host, first boot: the script the hub user data runs.
#
# The user data itself is assembled by infra/userdata.py: it writes this directory, bootstrap/common
# and the Python package bootstrap/ec2hub_bootstrap under /opt/ec2hub/bootstrap, then runs this script; nothing is
# templated in. cloud-init runs it once per instance, as root; everything that must happen on every
# start of the hub (settings, spawner package, config) is in its unit (ec2hub-hub.service,
# ExecStartPre=), see docs/ARCHITECTURE.md §10. Safe to run again: every step is an idempotent
# ensure_* that says what it found or did.
#
# Inputs (nothing else):
#   IMDSv2 http://169.254.169.254     instance id, region, private IP, and the instance's tags
#                                     (metadata tags enabled; docs/ARCHITECTURE.md §5):
#     ec2hub:hub                  hub id (the CloudFormation stack name), logged
#     ec2hub:settings-parameter   SSM String parameter holding the HubSettings JSON
#     ec2hub:spawner-asset        s3://bucket/key.zip, the spawner package (a CDK asset); not
#                                 fetched when /opt/ec2hub/venv already has ec2spawner (baked AMI)
#     ec2hub:admin-user           optional: JupyterHub admin (with native auth: signs up, is authorized)
#     ec2hub:database-secret      Secrets Manager: the hub database's RDS secret (host, port, dbname, ...)
#     ec2hub:cookie-secret        Secrets Manager: JupyterHub's cookie secret (64 hex digits)
#     ec2hub:proxy-token-secret   Secrets Manager: the proxy's API token (64 hex digits)
#   SSM settings.auth.oauth_client_secret_parameter   only with an OAuth authenticator
#   AWS access: the instance role (credentials via IMDS), botocore standard retries, endpoints from
#   botocore's normal configuration.
#
# Outputs:
#   /opt/ec2hub/venv              JupyterHub 6.1.1, authenticators, psycopg, boto3, ec2spawner
#   /opt/ec2hub/node/bin          node + configurable-http-proxy 5.3.0 (kept if the AMI has them)
#   /etc/ec2hub/settings.json     the settings document (0644, nothing secret)      } rewritten on
#   /etc/ec2hub/host.json         private IP and admin user for the config (0644)   } every start
#   /etc/ec2hub/jupyterhub_config.py   the thin config (bootstrap/hub/jupyterhub_config.py)
#   /var/lib/ec2hub/              hub state, owned by the system user ec2hub, 0700:
#                                 nothing it must keep: the database is RDS, the cookie
#                                 secret and proxy token are in Secrets Manager
#   /run/ec2hub/hub.env           the service's secrets (0600 root, tmpfs), on every start
#   ec2hub-hub.service            hardened unit (bootstrap/hub/ec2hub-hub.service); without systemd
#                                 as PID 1 (a container, the local sandbox) its every-start step
#                                 runs here, then the hub in the foreground with the same user,
#                                 directory and environment
#   console output                one line per step, "ec2hub-hub: <step>: ..."; no secret printed
#
# OS assumptions: Linux with bash, coreutils, util-linux (setpriv), shadow-utils (useradd); Amazon
# Linux 2023 (dnf) or Debian/Ubuntu (apt-get) when Python or Node.js must be installed.
#
# Security: tag values are data, never code. This shell part reads no tag: the Python launcher
# reads them, checks them and writes JSON; commands get values as argv, never via a shell.
set -euo pipefail
umask 022

readonly LOG_PREFIX=ec2hub-hub
readonly VENV=/opt/ec2hub/venv
readonly NODE_BIN=/opt/ec2hub/node/bin
readonly ETC=/etc/ec2hub
readonly STATE=/var/lib/ec2hub
readonly HUB_USER=ec2hub
# Pinned to the repository's requirements.txt.
readonly PACKAGES=(
  jupyterhub==6.1.1 jupyterhub-nativeauthenticator==1.3.0
  oauthenticator==17.4.0 "psycopg[binary]==3.3.9" boto3==1.44.8 botocore==1.44.8 pydantic==2.14.3
  PyYAML==6.0.3 google-auth==2.63.0
)
readonly PROXY_VERSION=5.3.0

# shellcheck source-path=SCRIPTDIR source=../common/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common/venv.sh"

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

# The image steps: what a baked hub image has (infra/images.py runs `user-data.sh image` as the
# hub image's build component; the user data finds them present and installs nothing).
ensure_hub_environment() {
  ensure_venv jupyterhub "boto3, psycopg"
  ensure_proxy
}

main() {
  log start "ec2hub hub bootstrap"
  ensure_hub_environment
  ensure_hub_user
  run_step ec2hub_bootstrap.hub boot
}

if [[ ${1:-} == image ]]; then
  log start "ec2hub hub image: installing the environment"
  ensure_hub_environment
  "$VENV/bin/jupyterhub" --version >/dev/null || die check "$VENV/bin/jupyterhub does not run"
  "$NODE_BIN/configurable-http-proxy" --version >/dev/null || die check "configurable-http-proxy does not run"
  log "done" "the hub image's environment is in $VENV and $NODE_BIN"
else
  main "$@"
fi
