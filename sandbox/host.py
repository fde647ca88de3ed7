"""An isolated host: one simulated EC2 instance, booted with systemd as PID 1 and cloud-init.

Each :class:`IsolatedHost` has

- its own **network namespace** (``<vpc name>-<name>``, e.g. ``ec2hub-vpc-i-0abc``) with ``eth0``
  holding the instance's private address (and a MAC of its own) on the :class:`~sandbox.netns.Vpc`
  bridge and a default route to its subnet gateway (a route that ends inside the VPC namespace:
  nothing leaves the machine); the VPC's dnsmasq answers its DHCP and DNS;
- an **IMDSv2 emulator** answering at 169.254.169.254:80 inside that namespace
  (:mod:`sandbox.imds`), which also serves the instance's user data;
- a **booted machine** in that namespace: ``systemd-nspawn --boot`` runs the machine's own systemd
  as PID 1 over a copy-on-write overlay whose lower layer is the machine's root (the "AMI"), so
  useradd, /etc writes, units and mounts inside never touch the machine. nspawn gives it its own
  mount, PID, UTS and IPC namespaces and a container /dev (no disks); the directory holding every
  host's state and any ``hidden_paths`` are covered by empty tmpfs; a GPU instance gets NVIDIA-like
  device nodes (character devices 195:*), created by systemd-tmpfiles at boot as a driver's udev
  rules would;
- **cloud-init** (Debian's, from the machine) with the Ec2 datasource: it identifies the platform
  as AWS (a ``/sys/hypervisor/uuid`` starting with ``ec2``, what it reads on Xen-based EC2), gets
  an IMDSv2 token, crawls the metadata, and runs the user data once per instance id, with its
  output on the console like EC2's serial console (``console_output``).

Life cycle, like EC2's:

- :meth:`start` boots (the first time with the user data EC2 was given);
- :meth:`reboot` is ``systemctl reboot`` inside: nspawn exits 133 and the supervisor boots the same
  root again (no state change, the same instance id: cloud-init does not rerun the user data);
- :meth:`stop` is ``systemctl poweroff`` inside (an orderly shutdown of every unit), then the
  network, IMDS and cgroups go; after a grace period everything left is killed. The overlay's
  upper layer (the root volume) stays, so :meth:`start` again is a restarted instance;
- :meth:`terminate` also deletes the root volume.

systemd units the machine has enabled that are no part of an instance image (a database the
machine runs, apt's timers) are masked in the overlay (:data:`MASKED_UNITS` and
:func:`machine_units_to_mask`).

Usage for many instances on one bridge (what the sandbox's EC2 data plane does)::

    vpc = Vpc("ec2hub-vpc", gateways=["10.0.1.1/24", "10.0.2.1/24"]).create()
    endpoint = Relay(listen=("0.0.0.0", 4566), listen_netns=vpc.netns,
                     connect=("127.0.0.1", moto_port)).start()      # the AWS "VPC endpoint"
    host = IsolatedHost("i-0abc", vpc=vpc, ip="10.0.1.17",
                        imds=ImdsData(instance_id="i-0abc", region="us-east-1", tags={...}),
                        access_points=[EfsAccessPoint.make(efs_dir, described)],  # its user's home
                        hidden_paths=[".sandbox"],                # machine dirs it must not see
                        root_setup=bake_ami(aws_endpoint="http://10.0.1.1:4566", region="us-east-1"))
    host.start(user_data=b"#!/bin/bash\\n...")
    host.wait_for_user_data()
    ...
    host.terminate(); endpoint.stop(); vpc.destroy()
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from .imds import IMDS_ADDRESS, ImdsData, ImdsEmulator
from .netns import (
    NETNS_DIR,
    PREFIX,
    Vpc,
    add_netns,
    delete_netns,
    ip,
    list_netns,
    mac_for,
)
from .netns import cleanup_leftovers as cleanup_namespaces

DEFAULT_STATE_ROOT = Path("/var/tmp/ec2hub-hosts")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the sandbox's "AMI" has baked in: this repository's venv and Node toolchain.
REPO_VENV = Path(__file__).resolve().parent.parent / ".venv"
REPO_NODE_BIN = Path(__file__).resolve().parent.parent / "node_modules" / ".bin"
CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")
NSPAWN_REBOOT = 133  # systemd-nspawn's exit status when the container asked for a reboot
STOP_GRACE_S = 30.0
# Enabled on this kind of machine, no part of an instance image: they would start in every instance
# on a copy of the machine's data (a database) or wake up to run apt.
MASKED_UNITS = (
    "postgresql.service", "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
    "man-db.timer", "e2scrub_all.timer", "fstrim.timer",
    # A login prompt on the console: an EC2 image has one on its serial console, but here it only
    # adds a process per instance and noise to the console output.
    "console-getty.service",
)
# Units of systemd itself and cloud-init that an instance needs, whatever else the machine enabled.
KEPT_UNITS_PREFIXES = ("cloud-", "systemd-", "getty", "dbus", "remote-fs", "machines.target")

# cloud-init as an EC2 image configures it (Debian's cloud image: Ec2 datasource), plus what a
# container needs: no locale generation (the machine's image has none generated), no network
# config rendering (the data plane wired eth0 already; cloud-init's DHCP at its first stage still
# runs, against the VPC's dnsmasq), no ssh keys (no sshd in the image), no login user.
CLOUD_CFG = """\
# ec2hub sandbox image: cloud-init as on EC2 (Ec2 datasource, IMDSv2)
datasource_list: [ Ec2 ]
datasource:
  Ec2:
    metadata_urls: [ "http://169.254.169.254" ]
    timeout: 5
    max_wait: 60
network: {config: disabled}
locale: false
ssh_genkeytypes: []
# No default login user and no boot loader: the instance is reached through its services only.
users: []
grub_dpkg: {enabled: false}
"""

# Runs in a mount namespace of its own (unshare), so the overlay is mounted nowhere else. Boots
# the instance and boots it again while it asks for a reboot. Arguments: merged upper work, then
# the cgroup directories to move into, "--", then systemd-nspawn's arguments.
_SUPERVISOR = r"""
set -u
merged=$1 upper=$2 work=$3
shift 3
while [ "$1" != "--" ]; do echo $$ >"$1/cgroup.procs"; shift; done
shift
mount -t overlay ec2hub-root -o "lowerdir=/,upperdir=$upper,workdir=$work" "$merged" || exit 1
while :; do
  echo "ec2hub-host: booting"
  systemd-nspawn "$@"
  rc=$?
  [ "$rc" -eq 133 ] || break
  echo "ec2hub-host: rebooting"
done
echo "ec2hub-host: powered off (systemd-nspawn exit status $rc)"
exit "$rc"
"""

def _copy_dir_attrs(src: Path, dst: Path) -> None:
    st = src.stat()
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))


def upper_path(upper: Path, path: str | Path, *, mode: int = 0o755) -> Path:
    """``upper/<path>`` with its parent directories made like the machine's own (for root_setup).

    Writing into the upper layer of an overlay that is not mounted is how files are put into the
    host's root before it boots. Parents take the owner and mode of the lower (real) directory, so
    the merged view keeps them; new directories get ``mode``.
    """
    rel = Path(path).relative_to("/") if Path(path).is_absolute() else Path(path)
    current = upper
    real = Path("/")
    for part in rel.parts[:-1]:
        current, real = current / part, real / part
        if not current.exists() and not current.is_symlink():
            current.mkdir()
            if real.is_dir() and not real.is_symlink():
                _copy_dir_attrs(real, current)
            else:
                os.chmod(current, mode)
    return upper / rel


# Where a hardened unit cannot see (ProtectHome=, PrivateTmp=): an interpreter there is unusable.
_HIDDEN_FROM_UNITS = ("/root/", "/home/", "/run/user/", "/tmp/", "/var/tmp/")
AMI_VENV = "/opt/ec2hub/venv"
AMI_NODE = "/opt/ec2hub/node"
AMI_SRC = "/opt/ec2hub/src"
PIP_CONFIG_FILES = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", "/root/.config/pip/pip.conf")


class BakedAmi:
    """A ``root_setup`` that makes the host look like ec2hub's baked AMI (create with :func:`bake_ami`).

    - /opt/ec2hub/venv: this repository's venv, mounted read-only (nspawn ``--overlay-ro``) with a
      thin layer on top that makes it relocatable: its scripts' ``#!`` lines and its interpreter
      point into /opt/ec2hub/venv, and editable installs into /opt/ec2hub/src. The checkout may
      live where the hardened units cannot see (under /root, or a CI clone under /tmp); the AMI's
      venv must not. When the venv's base interpreter lives there too, the machine's own Python
      of the same minor version stands in (same ABI);
    - /opt/ec2hub/node/bin/{node,configurable-http-proxy}: the repository's node_modules, mounted
      read-only at /opt/ec2hub/node/lib/node_modules;
    - ``~/.aws/config`` with ``endpoint_url`` = the AWS emulator's in-VPC address, as botocore's
      normal configuration (docs/ARCHITECTURE.md §7), for root (the user data) and for the hub's
      service user (home /var/lib/ec2hub; readable by it, nothing secret in it);
    - ``allow_dummy_auth``: /etc/ec2hub/allow-dummy-auth, the marker without which the hub config
      refuses DummyAuthenticator (only a sandbox image has it);
    - ``venv_layers``: a baked class's image (:mod:`sandbox.images`): directories laid read-only
      over the venv, the last topmost: what the class's image build installed into it. An image
      is a layer of the venv, not of the whole root: the kernel refuses an overlay whose lower
      layers nest (a layer on the machine's disk under the lower layer ``/``: ELOOP);
    - ``venv_upper``: a writable venv (an image build): every change lands in this directory,
      which then is the image's layer;
    - ``pip_config``: /etc/pip.conf (where pip finds packages: a local index, no PyPI);
    - ``venv=None``: a stock AMI, no venv at all (the user data installs it).
    """

    def __init__(self, *, venv: Path | None, node_bin: Path | None, aws_endpoint: str | None, region: str | None,
                 allow_dummy_auth: bool, venv_layers: Sequence[Path] = (), venv_upper: Path | None = None,
                 pip_config: str | None = None) -> None:
        self.venv, self.node_bin = Path(venv) if venv else None, Path(node_bin) if node_bin else None
        self.aws_endpoint, self.region, self.allow_dummy_auth = aws_endpoint, region, allow_dummy_auth
        self.venv_layers, self.venv_upper = [Path(p) for p in venv_layers], venv_upper
        self.pip_config = pip_config

    def __call__(self, upper: Path) -> None:
        for stale in (AMI_VENV, f"{AMI_NODE}/bin"):  # an older sandbox's symlinks
            link = upper / stale.lstrip("/")
            if link.is_symlink():
                link.unlink()
        if self.venv:  # nspawn makes the mount point's last directory only
            upper_path(upper, AMI_VENV).mkdir(exist_ok=True)
        if self.node_bin:
            for tool in ("node", "configurable-http-proxy"):
                dst = upper_path(upper, f"{AMI_NODE}/bin/{tool}")
                if dst.is_symlink() or dst.exists():
                    dst.unlink()
                dst.symlink_to(f"{AMI_NODE}/lib/node_modules/{self.node_bin.name}/{tool}")
        if self.aws_endpoint or self.region:
            lines = ["[default]"]
            if self.region:
                lines.append(f"region = {self.region}")
            if self.aws_endpoint:
                lines.append(f"endpoint_url = {self.aws_endpoint}")
            for home, mode in (("/root", 0o700), ("/var/lib/ec2hub", 0o755)):
                config = upper_path(upper, f"{home}/.aws/config", mode=mode)
                config.write_text("\n".join(lines) + "\n", encoding="utf-8")
                os.chmod(config.parent, mode)
                os.chmod(config, mode & 0o644)
        marker = upper_path(upper, "/etc/ec2hub/allow-dummy-auth")
        if self.allow_dummy_auth:
            marker.write_text("local sandbox image: DummyAuthenticator allowed\n", encoding="utf-8")
        elif marker.exists():
            marker.unlink()
        # pip reads the global files, then the user's, each overriding the last: the machine's own
        # (its root's user file, a mirror of this machine) are shadowed with the same content.
        for path in PIP_CONFIG_FILES:
            if self.pip_config:
                pip_conf = upper_path(upper, path)
                pip_conf.write_text(self.pip_config, encoding="utf-8")
                pip_conf.chmod(0o644)
            else:  # the machine's own, as before (and no directories made for nothing)
                (upper / path.lstrip("/")).unlink(missing_ok=True)

    def nspawn_args(self, state_dir: Path) -> list[str]:
        """The mounts of the venv (read-only, or writable into ``venv_upper``), the sources of its
        editable installs and node_modules."""
        args = []
        if self.venv:
            fixes = state_dir / "ami-venv"
            sources = self._relocation_layer(fixes)
            layers = ":".join(_escape(p) for p in (self.venv, fixes, *self.venv_layers))
            if self.venv_upper:
                self.venv_upper.mkdir(parents=True, exist_ok=True)
                args.append(f"--overlay={layers}:{_escape(self.venv_upper)}:{AMI_VENV}")
            else:
                args.append(f"--overlay-ro={layers}:{AMI_VENV}")
            args += [f"--bind-ro={_escape(src)}:{AMI_SRC}/{i}" for i, src in enumerate(sources)]
        if self.node_bin:
            args.append(f"--bind-ro={_escape(self.node_bin.parent)}:{AMI_NODE}/lib/node_modules")
        return args

    def _relocation_layer(self, fixes: Path) -> list[Path]:
        """Write the layer that relocates the venv to /opt/ec2hub/venv; the source trees it maps."""
        shutil.rmtree(fixes, ignore_errors=True)
        (fixes / "bin").mkdir(parents=True)
        cfg = dict(line.split(" = ", 1) for line in (self.venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
        interpreter = _interpreter_for_units(self.venv, cfg.get("version", ""))
        for name in ("python", "python3", f"python{'.'.join(cfg.get('version', '3').split('.')[:2])}"):
            (fixes / "bin" / name).symlink_to(interpreter)
        (fixes / "pyvenv.cfg").write_text(
            f"home = {Path(interpreter).parent}\ninclude-system-site-packages = false\nversion = {cfg.get('version', '')}\n")
        old_shebang = f"#!{self.venv}/bin/python".encode()
        for script in (self.venv / "bin").iterdir():
            if script.is_file() and not script.is_symlink():
                with open(script, "rb") as f:
                    head = f.read(len(old_shebang))
                    if head == old_shebang:
                        rest = f.read()
                        copy = fixes / "bin" / script.name
                        copy.write_bytes(f"#!{AMI_VENV}/bin/python".encode() + rest)
                        copy.chmod(stat.S_IMODE(script.stat().st_mode))
        # Editable installs (ec2spawner) name their source directories by absolute path.
        sources: list[Path] = []
        for site in self.venv.glob("lib/python3*/site-packages"):
            for finder in [*site.glob("__editable__*finder.py"), *site.glob("*.egg-link")]:
                text = finder.read_text()
                for found in sorted(set(re.findall(r"'(/[^']+)'", text)), key=len):
                    if Path(found).is_dir() and not any(Path(found).is_relative_to(s) for s in sources):
                        sources.append(Path(found))
                for i, src in enumerate(sources):
                    text = text.replace(f"'{src}", f"'{AMI_SRC}/{i}")
                upper_path(fixes, "/" + str(finder.relative_to(self.venv))).write_text(text)
        return sources


def _escape(path: Path | str) -> str:
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


def _interpreter_for_units(venv: Path, version: str) -> str:
    """The venv's base interpreter, or the machine's of the same minor version if units cannot see it."""
    real = str((venv / "bin" / "python").resolve())
    if not real.startswith(_HIDDEN_FROM_UNITS):
        return real
    minor = ".".join(version.split(".")[:2])
    system = Path(f"/usr/bin/python{minor}")
    if minor and system.exists():
        return str(system)
    raise RuntimeError(f"the venv's interpreter {real} is where hardened units cannot see it, and there is no "
                       f"{system}: make the venv with a Python outside /root, /home and /tmp")


def bake_ami(
    *,
    venv: str | Path = REPO_VENV,
    node_bin: str | Path | None = REPO_NODE_BIN,
    aws_endpoint: str | None = None,
    region: str | None = None,
    allow_dummy_auth: bool = False,
    **image,
) -> BakedAmi:
    """A ``root_setup`` that makes the host look like ec2hub's baked AMI (see :class:`BakedAmi`;
    ``image``: its ``venv_layers``, ``venv_upper``, ``pip_config``)."""
    return BakedAmi(venv=Path(venv) if venv else None, node_bin=Path(node_bin) if node_bin else None,
                    aws_endpoint=aws_endpoint, region=region, allow_dummy_auth=allow_dummy_auth, **image)


def machine_units_to_mask(etc_systemd: Path = Path("/etc/systemd/system")) -> list[str]:
    """:data:`MASKED_UNITS`, plus every service the machine enabled for multi-user.target that is
    not systemd's or cloud-init's own (a fresh CI machine may run other daemons)."""
    found = set(MASKED_UNITS)
    wants = etc_systemd / "multi-user.target.wants"
    if wants.is_dir():
        found.update(u.name for u in wants.iterdir()
                     if u.name.endswith(".service") and not u.name.startswith(KEPT_UNITS_PREFIXES))
    return sorted(found)


def gpu_device_nodes(count: int) -> list[tuple[str, int, int]]:
    """The character devices the NVIDIA driver makes for ``count`` GPUs: (name, major, minor)."""
    if count <= 0:
        return []
    return [*((f"nvidia{i}", 195, i) for i in range(count)), ("nvidiactl", 195, 255), ("nvidia-modeset", 195, 254)]


# EFS as an instance sees it: its access points' directories only, bound here, one per access
# point, and a mount helper that mounts them as amazon-efs-utils' does (``mount -t efs -o
# tls,iam,accesspoint=<id> <fs>:/ <dir>``).
EFS_ACCESS_POINTS_DIR = "/var/lib/ec2hub-sandbox-efs"
MOUNT_EFS = f"""#!/bin/bash
# ec2hub sandbox: EFS's mount helper (amazon-efs-utils) played. What the file system policy
# allows (infra/storage.py): TLS, IAM and an access point, else "access denied"; through an access
# point, only its root directory (the sandbox binds it at {EFS_ACCESS_POINTS_DIR}/<fs>/<access point>).
set -euo pipefail
source=$1 target=$2 opts=""
shift 2
while [[ $# -gt 0 ]]; do
  if [[ $1 == -o ]]; then opts=$2; shift; fi
  shift
done
declare -A has=()
ap=""
IFS=, read -ra options <<<"$opts"
for o in "${{options[@]}}"; do
  case $o in accesspoint=*) ap=${{o#accesspoint=}} ;; *) has[$o]=1 ;; esac
done
if [[ -z ${{has[tls]:-}} || -z ${{has[iam]:-}} || -z $ap ]]; then
  echo "mount.efs: $source: access denied by the file system policy (tls, iam and an access point are required)" >&2
  exit 32
fi
dir={EFS_ACCESS_POINTS_DIR}/${{source%%:*}}/$ap
[[ -d $dir ]] || {{ echo "mount.efs: $source: access point $ap not found" >&2; exit 32; }}
exec mount --bind "$dir" "$target"
"""


@dataclass(frozen=True)
class EfsAccessPoint:
    """One EFS access point in the sandbox: a directory of the machine that stands for its root.

    :meth:`make` creates the root directory as EFS does at the first mount through the access
    point (``RootDirectory.CreationInfo``: owner uid/gid and permissions) when it does not exist.
    A host is given only its own access points' roots: nothing else of the file system is in it.
    Not reproduced: EFS runs every request through the access point as its ``PosixUser``; a bind
    mount keeps the client's own uid (root on the instance stays root on the directory).
    """

    file_system_id: str
    access_point_id: str
    root: Path

    @classmethod
    def make(cls, efs_dir: Path, description: Mapping) -> EfsAccessPoint:
        """From a DescribeAccessPoints item, with the file system's contents under ``efs_dir``."""
        directory = description.get("RootDirectory") or {"Path": "/"}
        root = Path(efs_dir) / directory["Path"].lstrip("/")
        info = directory.get("CreationInfo")
        if not root.is_dir() and info:
            root.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            root.mkdir(mode=0o700)
            os.chown(root, int(info["OwnerUid"]), int(info["OwnerGid"]))
            os.chmod(root, int(info["Permissions"], 8))
        return cls(description["FileSystemId"], description["AccessPointId"], root)


class IsolatedHost:
    """One simulated instance; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        vpc: Vpc,
        ip: str,
        imds: ImdsData,
        prefix_len: int | None = None,
        gateway: str | None = None,
        state_root: str | Path = DEFAULT_STATE_ROOT,
        access_points: Sequence[EfsAccessPoint] = (),
        root_setup: Callable[[Path], None] | None = None,
        hidden_paths: Sequence[str | Path] = (),
        gpus: int = 0,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", name):
            raise ValueError(f"host name {name!r}: letters, digits, '_', '.', '-' (at most 41)")
        subnet_gw = vpc.gateway_for(ip)
        self.name = name
        self.vpc = vpc
        self.ip = ip
        self.mac = mac_for(ip)
        self.prefix_len = prefix_len or subnet_gw.network.prefixlen
        self.gateway = gateway or str(subnet_gw.ip)
        self.imds_data = imds
        if not imds.local_ipv4:
            imds.local_ipv4 = ip
        imds.mac = self.mac
        self.netns = f"{vpc.name}-{name}"  # a sandbox's namespaces share its VPC's name as prefix
        self.state_root = Path(state_root)
        self.state_dir = self.state_root / name
        self.access_points = list(access_points)
        self.root_setup = root_setup
        # Machine directories the instance must not see (the state root always is): e.g. the
        # sandbox's own state with its admin token.
        self.hidden_paths = [str(Path(p).resolve()) for p in hidden_paths]
        self.gpus = gpus
        self._proc: subprocess.Popen | None = None
        self._imds: ImdsEmulator | None = None
        self._expected_boots = 0

    # --- paths ----------------------------------------------------------------------------------
    @property
    def upper(self) -> Path:
        """The overlay's upper layer: every file the host wrote, as seen from the machine."""
        return self.state_dir / "upper"

    @property
    def console_path(self) -> Path:
        return self.state_dir / "console.log"

    @property
    def console_output(self) -> str:
        """What the instance printed on its console (systemd, cloud-init, the user data's output),
        like GetConsoleOutput."""
        try:
            # The console is a pseudo-terminal: it ends lines with \r\n.
            return self.console_path.read_text(encoding="utf-8", errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    @property
    def logs(self) -> str:
        """Console output, cloud-init's log and the IMDS requests served, for a failing test's report."""
        imds = "\n".join(self._imds.requests) if self._imds else ""
        try:
            cloud_init = (self.upper / "var/log/cloud-init.log").read_text(errors="replace")[-6000:]
        except OSError:
            cloud_init = ""
        return (f"--- console {self.name} ---\n{self.console_output[-8000:]}\n--- cloud-init.log (tail) ---\n"
                f"{cloud_init}\n--- imds requests ---\n{imds}\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid1(self) -> int:
        """The instance's PID 1 (its systemd) as the machine sees it."""
        assert self._proc is not None, "host not started"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid = _find_container_init(self._proc.pid)
            if pid is not None:
                return pid
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: no PID 1 (exited? {self.console_output[-2000:]})")

    @property
    def cgroups(self) -> list[Path]:
        """The host's cgroup in each hierarchy nspawn uses (named like its network namespace)."""
        return [h / self.netns for h in CGROUP_HIERARCHIES if h.is_dir()]

    # --- life cycle -----------------------------------------------------------------------------
    def start(self, user_data: str | Path | bytes | None = None) -> IsolatedHost:
        """Boot: network, IMDS (serving ``user_data``), overlay root, systemd, cloud-init.

        ``user_data`` is what RunInstances was given (a path or the bytes, gzip-compressed or not:
        cloud-init unpacks it). Without it the host keeps what its IMDS served before (a start
        after a stop: EC2 keeps an instance's user data).
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._kill_leftovers()
        for sub in ("upper", "work", "merged", "hypervisor"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_root, 0o700)
        saved = self.state_dir / "user-data"
        if user_data is not None:
            data = Path(user_data).read_bytes() if isinstance(user_data, Path) else (
                user_data.encode() if isinstance(user_data, str) else user_data
            )
            saved.write_bytes(data)
            os.chmod(saved, 0o600)
        if self.imds_data.user_data is None and saved.exists():
            self.imds_data.user_data = saved.read_bytes()
        if user_data is not None:
            self.imds_data.user_data = saved.read_bytes()
        self._bake_image()
        if self.root_setup:
            self.root_setup(self.upper)
        try:
            add_netns(self.netns)
            self.vpc.plug(self.netns, self.ip, self.prefix_len, self.gateway, mac=self.mac)
            ip("addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo", netns=self.netns)
            self._imds = ImdsEmulator(self.imds_data, netns=self.netns).start()
            cgroups = self.cgroups
            for cgroup in cgroups:
                cgroup.mkdir(exist_ok=True)
            # Counted before the supervisor starts: it may print this boot's marker before
            # Popen returns here (a loaded machine), which would then wait for a boot too many.
            self._expected_boots = self.boots + 1
            with open(self.console_path, "ab") as console:
                self._proc = subprocess.Popen(
                    ["unshare", "--mount", "--propagation", "private", "--",
                     "/bin/bash", "-c", _SUPERVISOR, "ec2hub-supervisor",
                     str(self.state_dir / "merged"), str(self.upper), str(self.state_dir / "work"),
                     *map(str, cgroups), "--", *self._nspawn_args()],
                    stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                    # the instance's environment, not the sandbox's (no AWS_* or test variables leak in)
                    env={"PATH": HOST_PATH, "LANG": "C.UTF-8"},
                    start_new_session=True,
                )
            (self.state_dir / "supervisor.pid").write_text(str(self._proc.pid))
        except BaseException:
            self.stop()
            raise
        return self

    def _nspawn_args(self) -> list[str]:
        merged = self.state_dir / "merged"
        args = [
            "--boot", f"--directory={merged}", f"--machine={self.netns}", f"--hostname={self.hostname}",
            # In the cgroup the supervisor moved into, without machined: the sandbox is no service
            # of the machine's (whose PID 1 need not be systemd).
            "--keep-unit", "--register=no",
            "--console=read-only", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
            f"--network-namespace-path={NETNS_DIR / self.netns}", "--private-network",
            # cloud-init identifies EC2 (Xen-based instance types) by this file; DMI, which it reads
            # on Nitro, it ignores in a container.
            f"--bind-ro={self.state_dir / 'hypervisor'}:/sys/hypervisor",
            f"--tmpfs={self.state_root}:mode=0700",
        ]
        args += [f"--tmpfs={p}:mode=0700" for p in self.hidden_paths if Path(p).is_dir()]
        for ap in self.access_points:
            args.append(f"--bind={_escape(ap.root)}:{EFS_ACCESS_POINTS_DIR}/{ap.file_system_id}/{ap.access_point_id}")
        if hasattr(self.root_setup, "nspawn_args"):  # a baked AMI's read-only mounts
            args += self.root_setup.nspawn_args(self.state_dir)
        return args

    def _bake_image(self) -> None:
        """What every instance's root has besides the machine's: cloud-init's EC2 configuration,
        a machine id of its own, its name in /etc/hosts, the VPC resolver, masked machine units,
        GPU device nodes for a GPU instance type."""
        (self.state_dir / "hypervisor" / "uuid").write_text("ec2" + uuid.uuid4().hex[3:] + "\n")
        cfg = upper_path(self.upper, "/etc/cloud/cloud.cfg.d/90-ec2hub-sandbox.cfg")
        cfg.write_text(CLOUD_CFG, encoding="utf-8")
        machine_id = upper_path(self.upper, "/etc/machine-id")
        if not machine_id.exists() or len(machine_id.read_text().strip()) != 32:
            machine_id.write_text(uuid.uuid4().hex + "\n")  # EC2 images ship none: made at first boot
        machine_id.chmod(0o444)
        resolv = upper_path(self.upper, "/etc/resolv.conf")
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text(f"# ec2hub sandbox: the VPC resolver\nnameserver {self.gateway}\n", encoding="utf-8")
        resolv.chmod(0o644)
        self._write_etc_hosts()
        for unit in machine_units_to_mask():
            mask = upper_path(self.upper, f"/etc/systemd/system/{unit}")
            if not mask.is_symlink():
                mask.unlink(missing_ok=True)
                mask.symlink_to("/dev/null")
        mount_efs = upper_path(self.upper, "/usr/sbin/mount.efs")  # the image's amazon-efs-utils
        mount_efs.write_text(MOUNT_EFS, encoding="utf-8")
        mount_efs.chmod(0o755)
        tmpfiles = upper_path(self.upper, "/etc/tmpfiles.d/ec2hub-sandbox-gpu.conf")
        nodes = gpu_device_nodes(self.gpus)
        if nodes:
            tmpfiles.write_text("# ec2hub sandbox: the GPU device nodes an NVIDIA driver makes\n" + "".join(
                f"c /dev/{name} 0666 root root - {major}:{minor}\n" for name, major, minor in nodes))
        else:
            tmpfiles.unlink(missing_ok=True)

    @property
    def hostname(self) -> str:
        return "ip-" + self.ip.replace(".", "-")

    def _write_etc_hosts(self) -> None:
        """The instance's own name resolves, as the VPC's DNS makes it on EC2."""
        hosts = upper_path(self.upper, "/etc/hosts")
        base = Path("/etc/hosts").read_text(encoding="utf-8") if Path("/etc/hosts").exists() else ""
        line = f"{self.ip} {self.imds_data.hostname} {self.hostname}  # ec2hub sandbox\n"
        kept = "".join(l for l in base.splitlines(keepends=True) if "# ec2hub sandbox" not in l)
        hosts.write_text(kept + ("" if kept.endswith("\n") or not kept else "\n") + line, encoding="utf-8")
        os.chmod(hosts, 0o644)

    def reboot(self) -> None:
        """``systemctl reboot`` inside, as RebootInstances does (an ACPI reboot): the same disk and
        instance id, a new boot."""
        boots = self.boots
        self._expected_boots = boots + 1
        self.exec(["systemctl", "--no-block", "reboot"], check=True)
        deadline = time.monotonic() + 60
        while self.boots == boots:
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError(f"{self.name}: did not reboot:\n{self.console_output[-3000:]}")
            time.sleep(0.1)

    def wait_for_power_off(self) -> int | None:
        """Block until this boot's machine has powered off (a reboot does not end it: the
        supervisor boots it again); its exit status, or None when it was not running."""
        proc = self._proc
        return None if proc is None else proc.wait()

    @property
    def boots(self) -> int:
        """How many times this host booted since its disk was made (from its console output)."""
        return self.console_output.count("ec2hub-host: booting")

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Shut the host down through its systemd (``systemctl poweroff``), then remove its network
        and cgroups; keep its disk. What has not ended within ``grace_s`` is killed. Idempotent."""
        if self._proc is not None:
            if self._proc.poll() is None and grace_s > 0:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, AssertionError):
                    pid1 = _find_container_init(self._proc.pid)
                    if pid1 is not None:
                        os.kill(pid1, signal.SIGRTMIN + 4)  # systemd: start poweroff.target
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=grace_s)
            if self._proc.poll() is None:
                self._kill_cgroups()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            self._proc = None
        self._kill_leftovers()
        if self._imds:
            self._imds.stop()
            self._imds = None
        self.vpc.unplug(self.netns)
        delete_netns(self.netns)

    def terminate(self) -> None:
        """Stop and delete the host's disk (the overlay's upper layer and console log)."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.state_root.rmdir()  # only when no other host is left

    def restart(self) -> IsolatedHost:
        """Stop then start again with the same disk and user data (StopInstances, StartInstances)."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()

    # --- inside the host ------------------------------------------------------------------------
    def exec(self, argv: list[str], *, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the host (its namespaces and root) as root; never through a shell."""
        proc = subprocess.run(
            ["nsenter", f"--target={self.pid1}", "--mount", "--pid", "--net", "--uts", "--ipc", "--root", "--wd",
             "--", *argv],
            capture_output=True, text=True, timeout=timeout, env={"PATH": HOST_PATH, "LANG": "C.UTF-8"}, check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.name}: {argv}: exit {proc.returncode}: {proc.stderr}")
        return proc

    def wait_for_console(self, pattern: str, timeout: float = 60) -> re.Match:
        """Wait until the console output matches ``pattern`` (regex); raise with the output if not."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.MULTILINE)
        while True:
            found = regex.search(self.console_output)
            if found:
                return found
            if time.monotonic() > deadline or not self.running:
                raise TimeoutError(f"{self.name}: no {pattern!r} in console output:\n{self.logs}")
            time.sleep(0.1)

    def wait_for_boot(self, timeout: float = 90) -> None:
        """Wait until cloud-init has finished this boot (its final stage ran, the user data with it)."""
        deadline = time.monotonic() + timeout
        finished = re.compile(r"Cloud-init v\. \S+ finished at")
        while True:
            text = self.console_output
            if self.boots >= self._expected_boots and finished.search(text[text.rfind("ec2hub-host: booting"):]):
                return
            if time.monotonic() > deadline or not self.running:
                raise TimeoutError(f"{self.name}: cloud-init did not finish this boot:\n{self.logs}")
            time.sleep(0.1)

    def wait_for_user_data(self, timeout: float = 90) -> int:
        """Wait until this boot's cloud-init is done, and the user data with it (a boothook's unit,
        infra.userdata's EARLY_UNITS, may end after cloud-init); the user data's exit status."""
        deadline = time.monotonic() + timeout
        self.wait_for_boot(timeout)
        while (status := self.user_data_exit_status) is None:
            if time.monotonic() > deadline or not self.running:
                raise TimeoutError(f"{self.name}: the user data did not end:\n{self.logs}")
            time.sleep(0.2)
        return status

    def journal(self, unit: str | None = None, *, this_boot: bool = False) -> str:
        """The instance's journal (its systemd's; what units and cloud-init logged), read from its
        disk: one message a line, of ``unit`` only if given, of the latest boot only if asked."""
        directory = self.upper / "var/log/journal"
        argv = ["journalctl", f"--directory={directory}", "--no-pager", "--output=cat"]
        if this_boot:
            boots = subprocess.run([*argv, "--list-boots"], capture_output=True, text=True, check=False).stdout
            rows = [line.split() for line in boots.splitlines() if line.split() and line.split()[0].lstrip("-").isdigit()]
            if not rows:
                return ""
            argv.append(f"--boot={rows[-1][1]}")
        if unit:
            argv.append(f"--unit={unit}")
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    @property
    def user_data_exit_status(self) -> int | None:
        """The exit status of the user data's last run (None: it never ran, or has not ended): of
        the unit a boothook user data runs it as, where the journal has that unit, else of the
        script cloud-init's final stage ran."""
        # Imported here: infra's config models take 0.25 s to import.
        from infra.userdata import EARLY_UNITS

        early = EARLY_UNITS["notebook"]
        unit = self.journal(unit=early)
        if unit:
            last = unit[unit.rfind(f"Starting {early}"):]
            exited = re.search(r"Main process exited, code=(exited|killed|dumped), status=(\d+)", last)
            if exited:
                return int(exited.group(2)) + (0 if exited.group(1) == "exited" else 128)
            return 0 if f"Finished {early}" in last else None
        try:
            log = (self.upper / "var/log/cloud-init.log").read_text(errors="replace")
        except FileNotFoundError:
            return None
        ran = log.rfind("Running command ['/var/lib/cloud/instance/scripts/part-001']")
        if ran < 0:
            return None
        # cloud-init logs a failure as "Unexpected error while running command", then "Exit code: N".
        end = log.find("finish: modules-final/config-scripts-user", ran)
        failed = re.search(r"^Exit code: (\d+)$", log[ran:end if end >= 0 else None], re.MULTILINE)
        return int(failed.group(1)) if failed else 0

    # --- leftovers ------------------------------------------------------------------------------
    def _kill_cgroups(self) -> None:
        """SIGKILL every process of the host's cgroups (cgroup.kill: atomic, recursive)."""
        for cgroup in self.cgroups:
            with contextlib.suppress(OSError):
                (cgroup / "cgroup.kill").write_text("1")
        for cgroup in self.cgroups:
            with contextlib.suppress(OSError):
                procs = (cgroup / "cgroup.procs").read_text().split()
                for pid in procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)

    def _kill_leftovers(self) -> None:
        self._kill_cgroups()
        kill_processes_under(self.state_dir)
        remove_runtime_leftovers(self.netns)
        delete_netns(self.netns)


def _find_container_init(supervisor: int) -> int | None:
    """The descendant of ``supervisor`` that is PID 1 of its own PID namespace (the booted systemd)."""
    children = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            children.setdefault(int(stat_file.read_text().rsplit(")", 1)[1].split()[1]), []).append(
                int(stat_file.parent.name))
    todo = list(children.get(supervisor, []))
    while todo:
        pid = todo.pop(0)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    if len(ids) > 1 and ids[-1] == "1":
                        return pid
        todo.extend(children.get(pid, []))
    return None


def remove_runtime_leftovers(netns: str, timeout: float = 5.0) -> None:
    """What systemd-nspawn leaves on the machine after a container it ran: its propagation
    directory and its cgroups (``payload``/``supervisor`` and the units' sub-cgroups).

    A cgroup goes only when no process, not even a zombie, is left in it: a killed container's
    last processes may take a moment to be reaped, so this retries until ``timeout``.
    """
    shutil.rmtree(NSPAWN_PROPAGATE / netns, ignore_errors=True)
    deadline = time.monotonic() + timeout
    for hierarchy in CGROUP_HIERARCHIES:
        top = hierarchy / netns
        while top.is_dir():
            # Deepest first: a cgroup goes only when it has no children and no processes.
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
            if not top.is_dir() or time.monotonic() > deadline:
                break
            time.sleep(0.05)


def kill_processes_under(state_dir: Path) -> list[int]:
    """SIGKILL every process whose root or command line is in ``state_dir`` (a crashed run's)."""
    killed = []
    marker = str(state_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            root = os.readlink(entry / "root")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if root.startswith(marker) or marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    deadline = time.monotonic() + 5
    while killed and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in killed):
        time.sleep(0.05)
    return killed


def cleanup_leftovers(state_root: str | Path = DEFAULT_STATE_ROOT, prefix: str = PREFIX + "vpc") -> None:
    """Remove what a crashed run left: its hosts' processes, cgroups and nspawn runtime
    directories, then its namespaces (and the VPC's dnsmasq).

    ``prefix`` is the VPC's name: the VPC namespace, every host namespace and every host cgroup
    start with it, so two sandboxes (or a sandbox and the tests) with different VPC names never
    clean each other up.
    """
    names = {n for n in list_netns() if n.startswith(prefix)}
    for hierarchy in CGROUP_HIERARCHIES:
        if hierarchy.is_dir():
            names.update(c.name for c in hierarchy.iterdir() if c.is_dir() and c.name.startswith(prefix))
    if NSPAWN_PROPAGATE.is_dir():
        names.update(c.name for c in NSPAWN_PROPAGATE.iterdir() if c.name.startswith(prefix))
    for name in names:
        for hierarchy in CGROUP_HIERARCHIES:
            with contextlib.suppress(OSError):
                (hierarchy / name / "cgroup.kill").write_text("1")
    kill_processes_under(Path(state_root))
    for name in names:
        remove_runtime_leftovers(name)
    cleanup_namespaces(prefix)
