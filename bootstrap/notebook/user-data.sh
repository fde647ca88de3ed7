#!/bin/bash
# ec2hub notebook instance, first boot: the script the notebook user data runs.
#
# The user data itself is assembled by infra/userdata.py: it writes this directory, bootstrap/common
# and the Python package bootstrap/ec2hub_bootstrap under /opt/ec2hub/bootstrap, then has this
# script run as ec2hub-user-data.service, once per instance, as root. Identical for every user and
# server; nothing is templated in. What must happen on every start of the server is in its unit
# (ExecStartPre=), docs/ARCHITECTURE.md §10. Safe to run again: every step is an idempotent
# ensure_* that says what it found or did.
#
# Inputs (nothing else):
#   IMDSv2 http://169.254.169.254     instance id, region, and the instance's tags (launch templates
#                                     enable instance metadata tags; docs/ARCHITECTURE.md §3):
#     ec2hub:user           JupyterHub user name (any unicode): becomes a safe unix user name
#     ec2hub:server         server name ("" = default server), logged only
#     ec2hub:hub            hub id, logged only
#     ec2hub:class          instance class slug, logged only
#     ec2hub:secret-prefix  SSM prefix; this server's env is the SecureString <prefix><instance-id>
#     ec2hub:efs            EFS file system id; absent = home on the instance's own disk
#     ec2hub:efs-access-point  the user's access point on it (made by the spawner)
#   SSM SecureString <prefix><instance-id>   JSON object of environment variables for
#                                     jupyterhub-singleuser (JUPYTERHUB_API_TOKEN, ...), written by
#                                     the spawner just after launch and again before a resume, so
#                                     it is fetched with backoff on every start (botocore standard
#                                     retries; credentials from the instance role; endpoint from
#                                     botocore's normal configuration).
#
# Outputs (docs/ARCHITECTURE.md §10): the unix user jupyter-<slug> (notebook.py unix_name), its
# home (EFS through the access point, in /etc/fstab too), the venv and EFS client (install.sh: kept
# from a baked image), the hardened units (ec2hub-singleuser.service and its drop-in,
# ec2hub-nvidia.service, ec2hub-activity.service) and /etc/ec2hub/singleuser.env (root 0600,
# rewritten on every start). Console: one line per step, "ec2hub-notebook: <step>:"; never a secret.
# Without systemd as PID 1 the every-start steps run here, then the server in the foreground.
#
# OS assumptions: Linux with bash, coreutils, util-linux (mount, setpriv), shadow-utils (useradd);
# Amazon Linux 2023 or Debian/Ubuntu for installing Python and NFS when the AMI lacks them.
#
# Security: tag values are data, never code. This shell part reads no tag; the Python launcher
# reads and checks them and passes them to commands as argv, never through a shell.
set -euo pipefail
umask 022

LOG_PREFIX=ec2hub-notebook
VENV=/opt/ec2hub/venv

# The image steps (venv, EFS client): the same file the Image Builder component runs.
# shellcheck source-path=SCRIPTDIR source=install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"

main() {
  log start "ec2hub notebook bootstrap"
  ensure_notebook_environment
  run_step ec2hub_bootstrap.notebook boot
}

main "$@"
