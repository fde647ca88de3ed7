"""An isolated host: one simulated EC2 instance that runs its real user data as root.

Each :class:`IsolatedHost` has

- its own **network namespace** (``<vpc name>-<name>``, e.g. ``ec2hub-vpc-i-0abc``) with ``eth0``
  holding the instance's private address on the :class:`~sandbox.netns.Vpc` bridge and a default
  route to its subnet gateway (a route that ends inside the VPC namespace: nothing leaves the
  machine), and its hostname ``ip-10-0-1-17`` resolvable through its /etc/hosts;
- an **IMDSv2 emulator** answering at 169.254.169.254:80 inside that namespace
  (:mod:`sandbox.imds`);
- its own **mount and PID namespaces** over a copy-on-write overlay whose lower layer is the
  machine's root (the "AMI"), entered with ``unshare --mount --pid --fork`` and ``chroot``: useradd,
  /etc writes and mounts inside never touch the machine; /proc, /sys, /run and a minimal /dev
  (no disks; its own ptys) are mounted inside; the directory holding every host's state, and any
  ``hidden_paths``, are covered by empty tmpfs;
- its **user data** run as root by a small PID 1, stdout and stderr captured as the console output.

``stop()`` kills the PID namespace (the kernel ends every process in it, and with the last one the
mount namespace and all its mounts go), deletes the network namespace (and with it the veth pair)
and stops the IMDS emulator. The overlay's upper layer survives a stop, so ``start()`` again is a
restarted instance with the same root volume; ``terminate()`` also deletes it.

Usage for many instances on one bridge (what the sandbox's EC2 data plane does)::

    vpc = Vpc("ec2hub-vpc", gateways=["10.0.1.1/24", "10.0.2.1/24"]).create()
    endpoint = Relay(listen=("0.0.0.0", 4566), listen_netns=vpc.netns,
                     connect=("127.0.0.1", moto_port)).start()      # the AWS "VPC endpoint"
    host = IsolatedHost("i-0abc", vpc=vpc, ip="10.0.1.17",
                        imds=ImdsData(instance_id="i-0abc", region="us-east-1", tags={...}),
                        efs_dir="/var/tmp/sandbox-efs",          # bound at /mnt/efs
                        hidden_paths=[".sandbox"],                # machine dirs it must not see
                        root_setup=bake_ami(aws_endpoint="http://10.0.1.1:4566", region="us-east-1"))
    host.start(user_data=b"#!/bin/bash\\n...")
    ...
    host.terminate(); endpoint.stop(); vpc.destroy()
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from .imds import IMDS_ADDRESS, ImdsData, ImdsEmulator
from .netns import NETNS_DIR, PREFIX, Vpc, add_netns, delete_netns, ip, list_netns

DEFAULT_STATE_ROOT = Path("/var/tmp/ec2hub-hosts")
USER_DATA_PATH = "var/lib/cloud/instance/user-data.txt"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the sandbox's "AMI" has baked in: this repository's venv and Node toolchain.
REPO_VENV = Path(__file__).resolve().parent.parent / ".venv"
REPO_NODE_BIN = Path(__file__).resolve().parent.parent / "node_modules" / ".bin"

# Runs as PID 1 of the new PID namespace, in the new mount namespace, before chroot. Arguments:
# merged upper work efs-source hide-dir hostname [more dirs to hide]. Nothing here comes from the
# user data or its tags.
_MOUNT_AND_CHROOT = r"""
set -eu
root=$1 upper=$2 work=$3 efs=$4 hide=$5  # $6: the host name (ip-10-0-1-17, as on EC2)
hostname "$6"
mount -t overlay ec2hub-root -o "lowerdir=/,upperdir=$upper,workdir=$work" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys" 2>/dev/null || true
# A container-style /dev: a few harmless devices, its own ptys; never the machine's disks.
mount -t tmpfs -o mode=755,size=1m dev "$root/dev"
for node in null zero full random urandom tty; do
  touch "$root/dev/$node"
  mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=1777,size=64m shm "$root/dev/shm"
mount -t tmpfs -o mode=755,size=64m run "$root/run"
mount -t tmpfs -o mode=700,size=1m hidden "$root$hide"
shift 6
for extra in "$@"; do
  if [ -d "$root$extra" ]; then mount -t tmpfs -o mode=700,size=1m hidden "$root$extra"; fi
done
if [ -n "$efs" ]; then
  mkdir -p "$root/mnt/efs"
  mount --bind "$efs" "$root/mnt/efs"
fi
cd "$root"
exec chroot "$root" /bin/bash -c "$INIT"
"""

# PID 1 inside the chroot: run the user data like cloud-init's scripts-user, then keep the
# "instance" running and reap orphans until stopped.
_INIT = r"""
echo "ec2hub-host: booting, running user data"
/var/lib/cloud/instance/user-data.txt </dev/null &
ud=$!
trap 'kill -TERM "$ud" 2>/dev/null' TERM
wait "$ud"
rc=$?
echo "ec2hub-host: user data exited with status $rc"
echo "$rc" >/var/lib/cloud/instance/user-data.rc
while :; do sleep 3600 & wait $!; done
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


def _make_traversable(upper: Path, path: Path) -> None:
    """Give every ancestor directory of ``path`` in the host's root search (x) permission for all."""
    for ancestor in [*reversed(path.parents[:-1]), *([path] if path.is_dir() else [])]:
        copy = upper_path(upper, ancestor / "x").parent
        if not copy.exists():
            copy.mkdir()
            _copy_dir_attrs(ancestor, copy)
        os.chmod(copy, stat.S_IMODE(copy.stat().st_mode) | 0o111)


def bake_ami(
    *,
    venv: str | Path = REPO_VENV,
    node_bin: str | Path | None = REPO_NODE_BIN,
    aws_endpoint: str | None = None,
    region: str | None = None,
    allow_dummy_auth: bool = False,
) -> Callable[[Path], None]:
    """A ``root_setup`` that makes the host look like ec2hub's baked AMI.

    - /opt/ec2hub/venv → ``venv`` (jupyterhub-singleuser, the hub, ec2spawner, boto3 already there);
    - /opt/ec2hub/node/bin → ``node_bin`` (node and configurable-http-proxy);
    - every directory on the way to the venv, its interpreter and node searchable by all (in the
      overlay only): the notebook and the hub run as unprivileged users;
    - ``~/.aws/config`` with ``endpoint_url`` = the AWS emulator's in-VPC address, as botocore's
      normal configuration (docs/ARCHITECTURE.md §7), for root (the user data) and for the hub's
      service user (home /var/lib/ec2hub; readable by it, nothing secret in it);
    - ``allow_dummy_auth``: /etc/ec2hub/allow-dummy-auth, the marker without which the hub config
      refuses DummyAuthenticator (only a sandbox image has it).
    """

    def setup(upper: Path) -> None:
        links = {"/opt/ec2hub/venv": venv}
        if node_bin:
            links["/opt/ec2hub/node/bin"] = node_bin
        for link, target in links.items():
            dst = upper_path(upper, link)
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(target)
        # The notebook and the hub run as unprivileged users: every directory on the way to the
        # venv, the interpreter it points to and node must be traversable for them, wherever
        # this checkout lives (under /root/.pyenv here, under a 0700 mktemp directory in a CI
        # clone). Only the overlay's copies change; the machine's directories keep their modes.
        targets = [Path(venv), (Path(venv) / "bin" / "python").resolve()]
        if node_bin:
            targets += [Path(node_bin), (Path(node_bin) / "node").resolve()]
        for target in targets:
            _make_traversable(upper, target)
        if aws_endpoint or region:
            lines = ["[default]"]
            if region:
                lines.append(f"region = {region}")
            if aws_endpoint:
                lines.append(f"endpoint_url = {aws_endpoint}")
            for home, mode in (("/root", 0o700), ("/var/lib/ec2hub", 0o755)):
                config = upper_path(upper, f"{home}/.aws/config", mode=mode)
                config.write_text("\n".join(lines) + "\n", encoding="utf-8")
                os.chmod(config.parent, mode)
                os.chmod(config, mode & 0o644)
        marker = upper_path(upper, "/etc/ec2hub/allow-dummy-auth")
        if allow_dummy_auth:
            marker.write_text("local sandbox image: DummyAuthenticator allowed\n", encoding="utf-8")
        elif marker.exists():
            marker.unlink()

    return setup


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
        efs_dir: str | Path | None = None,
        root_setup: Callable[[Path], None] | None = None,
        hidden_paths: Sequence[str | Path] = (),
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", name):
            raise ValueError(f"host name {name!r}: letters, digits, '_', '.', '-' (at most 41)")
        subnet_gw = vpc.gateway_for(ip)
        self.name = name
        self.vpc = vpc
        self.ip = ip
        self.prefix_len = prefix_len or subnet_gw.network.prefixlen
        self.gateway = gateway or str(subnet_gw.ip)
        self.imds_data = imds
        if not imds.local_ipv4:
            imds.local_ipv4 = ip
        self.netns = f"{vpc.name}-{name}"  # a sandbox's namespaces share its VPC's name as prefix
        self.state_root = Path(state_root)
        self.state_dir = self.state_root / name
        self.efs_dir = Path(efs_dir) if efs_dir else None
        self.root_setup = root_setup
        # Machine directories the instance must not see (the state root always is): e.g. the
        # sandbox's own state with its admin token.
        self.hidden_paths = [str(Path(p).resolve()) for p in hidden_paths]
        self._proc: subprocess.Popen | None = None
        self._imds: ImdsEmulator | None = None

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
        """What the instance printed (user data stdout and stderr), like GetConsoleOutput."""
        try:
            return self.console_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def logs(self) -> str:
        """Console output plus the IMDS requests served, for a failing test's report."""
        imds = "\n".join(self._imds.requests) if self._imds else ""
        return f"--- console {self.name} ---\n{self.console_output}\n--- imds requests ---\n{imds}\n"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid1(self) -> int:
        """The host's PID 1 as the machine sees it (the child ``unshare --fork`` made)."""
        assert self._proc is not None, "host not started"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text().split()
                if children:
                    return int(children[0])
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: no PID 1 (exited? {self.console_output[-2000:]})")

    # --- life cycle -----------------------------------------------------------------------------
    def start(self, user_data: str | Path | bytes | None = None) -> IsolatedHost:
        """Boot: network, IMDS, overlay root, then the user data (a path or the script's bytes,
        gzip-compressed or not, as EC2 accepts it).

        Without ``user_data`` the host runs the user data of its previous boot (a restart).
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._kill_leftovers()
        for sub in ("upper", "work", "merged"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_root, 0o700)
        ud_file = self.upper / USER_DATA_PATH
        if user_data is not None:
            data = Path(user_data).read_bytes() if isinstance(user_data, Path) else (
                user_data.encode() if isinstance(user_data, str) else user_data
            )
            # cloud-init runs gzip-compressed user data after unpacking it; infra compresses the
            # bootstrap scripts because they exceed EC2's 16 KB raw limit.
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            ud_file = upper_path(self.upper, "/" + USER_DATA_PATH)
            ud_file.write_bytes(data)
            os.chmod(ud_file, 0o700)
        elif not ud_file.exists():
            raise ValueError(f"{self.name}: no user data given and none from a previous boot")
        self._write_etc_hosts()
        if self.root_setup:
            self.root_setup(self.upper)
        try:
            add_netns(self.netns)
            self.vpc.plug(self.netns, self.ip, self.prefix_len, self.gateway)
            ip("addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo", netns=self.netns)
            self._imds = ImdsEmulator(self.imds_data, netns=self.netns).start()
            with open(self.console_path, "ab") as console:
                self._proc = subprocess.Popen(
                    [
                        "nsenter", f"--net={NETNS_DIR / self.netns}", "--",
                        "unshare", "--mount", "--pid", "--uts", "--fork", "--propagation", "private", "--",
                        "/bin/bash", "-c", _MOUNT_AND_CHROOT, "ec2hub-init",
                        str(self.state_dir / "merged"), str(self.upper), str(self.state_dir / "work"),
                        str(self.efs_dir or ""), str(self.state_root), self.hostname, *self.hidden_paths,
                    ],
                    stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                    # cloud-init's environment, not the sandbox's (no AWS_* or test variables leak in)
                    env={"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "INIT": _INIT},
                    start_new_session=True,
                )
            (self.state_dir / "unshare.pid").write_text(str(self._proc.pid))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def hostname(self) -> str:
        return "ip-" + self.ip.replace(".", "-")

    def _write_etc_hosts(self) -> None:
        """The instance's own name resolves, as the VPC's DNS makes it on EC2 (no DNS here)."""
        hosts = upper_path(self.upper, "/etc/hosts")
        base = Path("/etc/hosts").read_text(encoding="utf-8") if Path("/etc/hosts").exists() else ""
        line = f"{self.ip} {self.hostname}.ec2.internal {self.hostname}  # ec2hub sandbox\n"
        kept = "".join(l for l in base.splitlines(keepends=True) if "# ec2hub sandbox" not in l)
        hosts.write_text(kept + ("" if kept.endswith("\n") or not kept else "\n") + line, encoding="utf-8")
        os.chmod(hosts, 0o644)

    def stop(self) -> None:
        """Kill every process of the host and remove its network; keep its disk. Idempotent."""
        if self._proc is not None:
            with contextlib.suppress(RuntimeError, AssertionError):
                if self._proc.poll() is None:
                    os.kill(self.pid1, signal.SIGKILL)  # the kernel kills the whole PID namespace
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
        """Stop then start again with the same disk and user data: a rebooted instance."""
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
            ["nsenter", f"--target={self.pid1}", "--mount", "--pid", "--net", "--uts", "--root", "--wd", "--", *argv],
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
                raise TimeoutError(f"{self.name}: no {pattern!r} in console output:\n{self.console_output[-4000:]}")
            time.sleep(0.1)

    @property
    def user_data_exit_status(self) -> int | None:
        rc = self.upper / "var/lib/cloud/instance/user-data.rc"
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(rc.read_text())
        return None

    # --- leftovers ------------------------------------------------------------------------------
    def _kill_leftovers(self) -> None:
        kill_processes_under(self.state_dir)
        delete_netns(self.netns)


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
    """Remove what a crashed run left: its hosts' processes, then its namespaces.

    ``prefix`` is the VPC's name: the VPC namespace and every host namespace start with it, so two
    sandboxes (or a sandbox and the tests) with different VPC names never clean each other up.
    """
    kill_processes_under(Path(state_root))
    for name in list_netns():
        if name.startswith(prefix):
            delete_netns(name)
