# shellcheck shell=bash
# Sourced by bootstrap/notebook/user-data.sh and bootstrap/hub/user-data.sh: console lines and the
# Python venv the steps run in. The caller sets LOG_PREFIX, VENV and PACKAGES first. The notebook's
# image steps are in notebook/install.sh, which uses these.

log() { printf '%s: %s: %s\n' "$LOG_PREFIX" "$1" "$2"; }
die() { log "$1" "ERROR: $2" >&2; exit 1; }

# A Python >= 3.10 for the venv: the AMI's, else the distribution's.
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
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q python3 python3-venv
  fi
  PYTHON=$(find_python) || die python "no Python >= 3.10 and none could be installed: use an AMI with python3.11"
}

# venv_serves PROGRAM PACKAGES: whether $VENV has bin/PROGRAM and has the distributions PACKAGES
# ("a, b") installed (a baked image, or an install that completed). Asked of the distributions'
# metadata, which pip writes once a package's files are in place (and after its dependencies'),
# not by importing them: importing jupyterlab alone took 2.3 s of CPU, in every first boot.
venv_serves() {
  [[ -x $VENV/bin/$1 ]] && "$VENV/bin/python" -c '
import importlib.metadata, sys
for name in sys.argv[1].split(","):
    importlib.metadata.distribution(name.strip())
' "$2" 2>/dev/null
}

# install_venv [REQUIREMENT...]: $VENV (created if absent) with PACKAGES and the extra requirements.
# shellcheck disable=SC2120 # the extras come from notebook/install.sh; the hub passes none
install_venv() {
  ensure_python
  log venv "installing into $VENV: ${PACKAGES[*]}${*:+ $*}"
  mkdir -p "$(dirname "$VENV")"
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "${PACKAGES[@]}" "$@" ||
    die venv "pip install failed: the instance needs a route to PyPI (NAT or a mirror) or a baked AMI with $VENV"
  log venv "installed"
}

# ensure_venv PROGRAM PACKAGES: keep $VENV when it serves (venv_serves), else install_venv.
ensure_venv() {
  local program=$1 packages=$2
  shift 2
  if venv_serves "$program" "$packages"; then
    log venv "$VENV has $program and $packages"
    return
  fi
  install_venv "$@"
}

# run_step MODULE COMMAND: a Python step as root, with the same clean environment as in the units.
run_step() {
  exec env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/opt/ec2hub/bootstrap "$VENV/bin/python" -m "$1" "$2"
}
