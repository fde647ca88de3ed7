#!/bin/bash
# ec2hub notebook instance: the environment an image can hold, installed once per image or once
# per instance. The one source of these steps for both paths (docs/ARCHITECTURE.md §10):
#   - the notebook user data (user-data.sh sources this file and calls ensure_notebook_environment:
#     on a baked image everything is present and nothing is installed);
#   - the EC2 Image Builder component of a class with `image: baked` (infra/images.py assembles
#     common/venv.sh and this file into the component and runs `install.sh image <requirement>...`,
#     with the class's `packages:` from instance-classes.yaml);
#   - the notebook launcher, for the EFS client when a first boot needs it and the AMI lacks it
#     (`install.sh efs-client`, from ec2hub_bootstrap/notebook.py).
#
# Inputs:
#   image [REQUIREMENT...]    the whole image: venv with PACKAGES and the extras, EFS client, checks
#   efs-client                the EFS client only
#   PACKAGES                  the base packages below, pinned to the hub's (requirements.txt)
#   pip's normal configuration (PIP_INDEX_URL, /etc/pip.conf, ...) chooses the index
#
# Outputs:
#   /opt/ec2hub/venv                       jupyterhub-singleuser, JupyterLab, boto3 and the extras
#   /opt/ec2hub/venv/ec2hub-requirements.txt   what was asked for, one requirement a line
#   mount.efs                              the EFS mount helper (amazon-efs-utils)
#
# OS assumptions: as user-data.sh (Amazon Linux 2023 with dnf, or Debian/Ubuntu with apt-get, when
# Python must be installed; the EFS client only with dnf). Runs as root; safe to run again.
set -euo pipefail
umask 022

LOG_PREFIX=${LOG_PREFIX:-ec2hub-notebook}
VENV=${VENV:-/opt/ec2hub/venv}
# Pinned to match the hub (requirements.txt of the repository).
PACKAGES=(jupyterhub==6.1.1 jupyterlab==4.6.6 jupyter_server==2.21.1 boto3==1.44.8)
# What the server needs from the venv: its program and these distributions (a baked image has them).
readonly SERVER_PROGRAM=jupyterhub-singleuser SERVER_PACKAGES="boto3, jupyterlab"
readonly MANIFEST=ec2hub-requirements.txt

# shellcheck source-path=SCRIPTDIR source=../common/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common/venv.sh"

# The EFS client, so the first boot mounts the homes without reaching a package repository.
# Only the mount helper mounts through an access point, with TLS and IAM (the file system policy).
ensure_efs_client() {
  if command -v mount.efs >/dev/null 2>&1; then
    log efs-client "present ($(command -v mount.efs))"
    return
  fi
  command -v dnf >/dev/null 2>&1 || die efs-client "no mount.efs and no dnf: use an AMI with amazon-efs-utils"
  dnf install -y -q amazon-efs-utils
  log efs-client "installed"
}

# ensure_notebook_environment: the user data's step. Keeps the venv when it already serves (a baked
# image, or a second run), else installs PACKAGES. The EFS client follows only when the first boot
# mounts EFS (the launcher runs `install.sh efs-client` then).
ensure_notebook_environment() {
  if venv_serves "$SERVER_PROGRAM" "$SERVER_PACKAGES"; then
    log venv "$VENV has $SERVER_PROGRAM and $SERVER_PACKAGES: nothing to install$(manifest_note)"
    return
  fi
  install_image_venv
}

# install_image_venv [REQUIREMENT...]: PACKAGES and the extras into the venv, and the manifest.
install_image_venv() {
  install_venv "$@"
  printf '%s\n' "${PACKAGES[@]}" "$@" >"$VENV/$MANIFEST"
}

manifest_note() {
  if [[ -r $VENV/$MANIFEST ]]; then
    printf ' (image built with %s)' "$(paste -sd' ' "$VENV/$MANIFEST")"
  fi
}

# The image: everything, the class's extras too, then checked (the component's build step).
install_image() {
  log start "ec2hub notebook image: installing the environment"
  install_image_venv "$@"
  ensure_efs_client
  "$VENV/bin/$SERVER_PROGRAM" --version >/dev/null || die check "$VENV/bin/$SERVER_PROGRAM does not run"
  "$VENV/bin/python" -m pip check --disable-pip-version-check >/dev/null ||
    die check "conflicting requirements in $VENV: $("$VENV/bin/python" -m pip check 2>&1 | head -3 | paste -sd' ')"
  log "done" "the image's environment is in $VENV"
}

# Run as a script; sourced (user-data.sh), it only defines the steps.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case ${1:-} in
    image) shift; install_image "$@" ;;
    efs-client) ensure_efs_client ;;
    *) die usage "install.sh image [REQUIREMENT...] | install.sh efs-client" ;;
  esac
fi
