#!/usr/bin/env bash
# Installs the Debian packages ec2hub's tests and sandbox need, only those missing.
#   iproute2     ip netns / veth / bridge for the simulated VPC and isolated hosts
#   util-linux   unshare, mount, nsenter for the isolated hosts' namespaces and overlay roots
#   chromium     the headless browser of the end-to-end tests
#   procps       ps/pkill used by teardown
# Assumes Debian or Ubuntu and root (as CI and the sandbox run); otherwise says what to install.
set -euo pipefail

packages=(iproute2 util-linux chromium procps)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "ec2hub needs these Debian packages: ${missing[*]}. Install them as root (apt-get install ${missing[*]})." >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
