#!/usr/bin/env bash
# Installs the Debian packages ec2hub's tests and sandbox need, only those missing.
#   iproute2     ip netns / veth / bridge for the simulated VPC and isolated hosts
#   util-linux   unshare, mount, nsenter for the isolated hosts' namespaces and overlay roots
#   chromium     the headless browser of the end-to-end tests and of the OpenID Connect sign-in test
#   procps       ps/pkill used by teardown
#   systemd-container  systemd-nspawn: every sandbox instance boots the machine's systemd as PID 1
#   cloud-init   runs each instance's user data from the IMDS emulator, once per instance id
#   dnsmasq-base the VPC's DHCP and DNS (cloud-init asks DHCP at boot)
#   isc-dhcp-client  the DHCP client cloud-init 22.4 uses (a dependency; named for minimal images)
#   postgresql   the hub database the sandbox and tests run (sandbox/postgres.py: as the postgres user,
#                on a scratch data directory, loopback only); the package's own service never starts:
#                no systemd here, policy-rc.d below, and booted instances mask postgresql.service
#   openssl      the scratch database's self-signed TLS certificate (the hub requires TLS, as RDS does)
#   nftables     nft: the sandbox's VPC peering (two-account sandbox) passes only the ports the
#                security groups open; its rules live in the VPC namespaces, never the machine's own
# None of them changes the running machine: without systemd as PID 1 no unit of theirs starts here
# (cloud-init's units run only inside the booted instances), and dnsmasq-base has no service.
# Assumes Debian or Ubuntu and root (as CI and the sandbox run); otherwise says what to install.
set -euo pipefail

packages=(iproute2 util-linux chromium procps systemd-container cloud-init dnsmasq-base isc-dhcp-client postgresql
  openssl nftables)
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
# Belt and braces for a machine whose PID 1 is systemd: no package script may start a service
# while installing (policy-rc.d(8) exit 101 = "action forbidden"); an existing policy is kept.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
