"""Network namespaces for the sandbox's simulated VPC, and relays between namespaces.

The network rule: sandbox traffic stays on loopback and inside namespaces created here. The
machine's own (root) network namespace never gets an address other than loopback, and no namespace
has a route off the machine:

- :class:`Vpc` is a namespace (``<prefix>vpc``) holding a bridge and the gateway address of every
  subnet. IPv4 forwarding is enabled in that namespace only, so instances on different subnets reach
  each other through it, as in a VPC. Nothing connects it to the root namespace.
- Each simulated instance has its own namespace with one end of a veth pair (``eth0``); the other
  end is a port of the VPC bridge. Both ends are created directly inside their namespaces, so no
  link ever exists in the root namespace, and deleting the namespaces deletes the links.
- The VPC namespace also runs the VPC's DHCP and DNS (``dnsmasq``, as the VPC's "AmazonProvidedDNS"
  at each subnet's gateway address): a booted instance's cloud-init asks DHCP for its address at
  its first stage, and dnsmasq hands every instance its fixed private address (by MAC, registered
  by :meth:`Vpc.plug`); it answers the VPC's own names (its host records, and the records of the
  Route 53 private zones the sandbox follows, :meth:`Vpc.set_dns_records`) and every other name
  query with NXDOMAIN at once, so nothing waits on a resolver timeout and no query leaves the
  machine.
- :class:`Relay` joins a listening socket in one namespace to a connecting socket in another
  (either may be the root namespace). Sockets keep the namespace they were created in, so a thread
  enters a namespace with ``setns(2)`` only for the ``socket()`` call. This is how the AWS emulator
  on the root namespace's loopback is "a VPC endpoint", and how a test reaches a notebook on
  10.x from 127.0.0.1.

Everything is named with :data:`PREFIX` so :func:`cleanup_leftovers` can remove what a crashed run
left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Self

log = logging.getLogger(__name__)

PREFIX = "ec2hub-"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 15  # usable characters of a Linux interface name
DNSMASQ_ROOT = Path("/run")

_libc = ctypes.CDLL(None, use_errno=True)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (never through a shell); raise with its stderr on failure."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run("ip", *(("-n", netns) if netns else ()), *args, check=check)


def list_netns() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def add_netns(name: str) -> None:
    """Create a named network namespace with loopback up (and nothing else)."""
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def delete_netns(name: str) -> None:
    """Delete a named namespace; its links (veth ends, bridges) go with it. Idempotent."""
    if (NETNS_DIR / name).exists():
        ip("netns", "delete", name, check=False)


def release_netns_dir(was_mounted: bool) -> None:
    """``ip netns add`` bind-mounts /run/netns the first time; undo that if it was us and it is empty."""
    if not was_mounted and not list_netns() and _is_mount_point(NETNS_DIR):
        run("umount", str(NETNS_DIR), check=False)


def _is_mount_point(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == str(path) for line in f)


def netns_dir_mounted() -> bool:
    return _is_mount_point(NETNS_DIR)


def cleanup_leftovers(prefix: str = PREFIX + "vpc") -> list[str]:
    """Delete every namespace named with ``prefix`` (a crashed run's); return their names.

    The default is the sandbox VPC's name, which its hosts' namespaces start with too; tests use
    VPCs of their own names so a sandbox start-up and a test run never delete each other's.
    """
    names = [n for n in list_netns() if n.startswith(prefix)]
    for name in names:
        delete_netns(name)
    # A crashed run's VPC DHCP/DNS server (it keeps the namespace alive without its name).
    for pid, cmdline in _processes():
        if cmdline.startswith("dnsmasq ") and f"--dhcp-hostsdir={DNSMASQ_ROOT}/{prefix}" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for leftover in DNSMASQ_ROOT.glob(f"{prefix}*-dnsmasq"):
        shutil.rmtree(leftover, ignore_errors=True)
    return names


def _processes() -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
    return found


def dnsmasq_dir(vpc_name: str) -> Path:
    """Where the VPC's dnsmasq keeps its host list and leases (named so a crashed run's is found)."""
    return DNSMASQ_ROOT / f"{vpc_name}-dnsmasq"


def link_name(*parts: str) -> str:
    """A short, stable interface name with the prefix (Linux allows 15 characters)."""
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return (PREFIX + digest)[:IFNAMSIZ]


# --- sockets inside a namespace -------------------------------------------------------------------


def socket_in_netns(
    netns: str | None, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
) -> socket.socket:
    """A socket created inside the named network namespace (``None``: the caller's own).

    ``setns(2)`` with CLONE_NEWNET changes only the calling thread, so a short-lived thread enters
    the namespace, creates the socket and ends; the socket stays in that namespace for life.
    """
    if netns is None:
        return socket.socket(family, type)
    result: dict[str, object] = {}

    def enter_and_create() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["sock"] = socket.socket(family, type)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            result["error"] = exc

    worker = threading.Thread(target=enter_and_create, name=f"setns-{netns}")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["sock"]  # type: ignore[return-value]


def listen_in_netns(netns: str | None, host: str, port: int, backlog: int = 128) -> socket.socket:
    sock = socket_in_netns(netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def connect_in_netns(netns: str | None, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket_in_netns(netns)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def http_get(netns: str | None, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0):
    """GET ``url`` from inside a namespace: ``(status, body bytes)``. For tests and health checks."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    conn.sock = connect_in_netns(netns, parts.hostname, parts.port or 80, timeout)
    conn.sock.settimeout(timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --- relays ---------------------------------------------------------------------------------------


class Relay:
    """Forward TCP connections from a listener in one namespace to a target in another.

    ``Relay(listen=("0.0.0.0", 4566), listen_netns="ec2hub-vpc", connect=("127.0.0.1", 5000))``
    makes the AWS emulator on the root namespace's loopback answer at every gateway address of the
    VPC, like a VPC endpoint. ``listen_netns=None`` listens in the root namespace (use 127.0.0.1
    there, never another address); ``connect_netns`` picks the namespace the target lives in.
    Port 0 picks a free port: read :attr:`port` after :meth:`start`.
    """

    def __init__(
        self,
        *,
        listen: tuple[str, int],
        connect: tuple[str, int],
        listen_netns: str | None = None,
        connect_netns: str | None = None,
        name: str = "relay",
    ) -> None:
        if listen_netns is None and not ipaddress.ip_address(listen[0]).is_loopback:
            raise ValueError("in the root namespace a relay listens on loopback only")
        self.listen_addr, self.connect_addr = listen, connect
        self.listen_netns, self.connect_netns = listen_netns, connect_netns
        self.name = name
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        assert self._sock is not None, "relay not started"
        return self._sock.getsockname()[1]

    def start(self) -> Relay:
        self._sock = listen_in_netns(self.listen_netns, *self.listen_addr)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        if self._sock:
            self._sock.close()
        with self._lock:
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    conn.close()
            self._conns.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = connect_in_netns(self.connect_netns, *self.connect_addr)
        except OSError as exc:
            log.debug("%s: connect %s failed: %s", self.name, self.connect_addr, exc)
            client.close()
            return
        with self._lock:
            self._conns.update((client, upstream))
        peers = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as sel:
            for s in peers:
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
            open_ends = 2
            try:
                while open_ends and not self._stop.is_set():
                    for key, _ in sel.select(timeout=0.5):
                        src = key.fileobj
                        try:
                            data = src.recv(65536)
                        except BlockingIOError:
                            continue
                        if not data:
                            sel.unregister(src)
                            with contextlib.suppress(OSError):
                                peers[src].shutdown(socket.SHUT_WR)
                            if src is upstream:
                                # The server closed: end the whole connection, as socat does.
                                # Keeping the client's half open let a keep-alive client send its
                                # next request into a connection whose server was gone; it then
                                # waited for an answer until its own timeout (60 s for botocore).
                                # Closing makes it see the close and retry on a new connection.
                                open_ends = 0
                                break
                            open_ends -= 1
                            continue
                        peers[src].setblocking(True)
                        peers[src].sendall(data)
                        peers[src].setblocking(False)
            except OSError:
                pass
            finally:
                with self._lock:
                    for s in peers:
                        self._conns.discard(s)
                        with contextlib.suppress(OSError):
                            s.close()


# --- the VPC --------------------------------------------------------------------------------------


class Vpc:
    """A namespace holding the bridge every simulated instance plugs into, and the subnet gateways.

    ``Vpc("ec2hub-vpc", gateways=["10.0.1.1/24", "10.0.2.1/24"])``. The gateway addresses live on
    the bridge in this namespace (never in the root namespace); forwarding is on here only.
    """

    BRIDGE = "br0"
    BRIDGE_MAC = "02:ec:20:00:00:01"  # locally administered

    def __init__(self, name: str = PREFIX + "vpc", *, gateways: list[str], dhcp: bool = True,
                 host_records: dict[str, str] | None = None) -> None:
        if not name.startswith(PREFIX):
            raise ValueError(f"namespace names start with {PREFIX!r} so a crashed run can be cleaned")
        self.name = name
        self.gateways = [ipaddress.ip_interface(g) for g in gateways]
        self.dhcp = dhcp
        # name -> address the VPC's DNS answers (e.g. the RDS endpoint); every other name: NXDOMAIN.
        self.host_records = dict(host_records or {})
        self._netns_dir_was_mounted = True
        self._dnsmasq: subprocess.Popen | None = None
        self._dnsmasq_dir: Path | None = None

    @property
    def netns(self) -> str:
        return self.name

    def gateway_for(self, address: str) -> ipaddress.IPv4Interface:
        """The gateway interface of the subnet that holds ``address``."""
        ip_addr = ipaddress.ip_address(address)
        for gw in self.gateways:
            if ip_addr in gw.network:
                return gw
        raise ValueError(f"{address} is in none of the VPC's subnets {[str(g.network) for g in self.gateways]}")

    def create(self) -> Vpc:
        self._netns_dir_was_mounted = netns_dir_mounted()
        delete_netns(self.name)  # a crashed run's
        add_netns(self.name)
        try:
            # A fixed address: a bridge otherwise takes the lowest address among its ports and
            # changes it as instances come and go, and every host's ARP entry for its gateway
            # then points at an address nobody answers to (connections hung until it expired).
            ip("link", "add", self.BRIDGE, "address", self.BRIDGE_MAC, "type", "bridge", netns=self.name)
            for gw in self.gateways:
                ip("addr", "add", str(gw), "dev", self.BRIDGE, netns=self.name)
            ip("link", "set", self.BRIDGE, "up", netns=self.name)
            # Forwarding between subnets, in this namespace only (net.ipv4.ip_forward is per netns).
            run("ip", "netns", "exec", self.name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            if self.dhcp:
                self._start_dnsmasq()
        except BaseException:
            self.destroy()
            raise
        return self

    def _start_dnsmasq(self) -> None:
        """DHCP (fixed addresses only, by MAC) and DNS (the host records and the files of its
        ``dns`` directory; NXDOMAIN for every other name) on the bridge."""
        if shutil.which("dnsmasq") is None:
            raise RuntimeError("dnsmasq is missing: install dnsmasq-base (scripts/install-system-deps.sh does)")
        self._dnsmasq_dir = dnsmasq_dir(self.name)
        shutil.rmtree(self._dnsmasq_dir, ignore_errors=True)
        hosts = self._dnsmasq_dir / "hosts"
        hosts.mkdir(parents=True)
        (self._dnsmasq_dir / "dns").mkdir()
        os.chmod(self._dnsmasq_dir, 0o755)
        argv = [
            "ip", "netns", "exec", self.name, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
            "--user=root", "--group=root", "--pid-file=", "--no-hosts", "--no-resolv", "--address=/#/",
            f"--interface={self.BRIDGE}", "--bind-interfaces", "--dhcp-authoritative",
            # The instance already holds its address (the data plane put it there): answering at
            # once, without dnsmasq's ping probe first, is what a VPC's DHCP does too.
            "--no-ping", f"--dhcp-hostsdir={hosts}", f"--dhcp-leasefile={self._dnsmasq_dir / 'leases'}",
            "--log-facility=-", "--quiet-dhcp",
            # Hosts files dnsmasq reads again whenever one is added, changed or removed (inotify),
            # served with TTL 0 (--local-ttl's default): a changed record is answered at once.
            f"--hostsdir={self._dnsmasq_dir / 'dns'}",
        ]
        for gw in self.gateways:
            argv.append(f"--dhcp-range={gw.network.network_address},static,{gw.network.netmask},12h")
        argv += [f"--host-record={name},{address}" for name, address in sorted(self.host_records.items())]
        self._dnsmasq = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True)

    def destroy(self) -> None:
        if self._dnsmasq is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._dnsmasq.pid, signal.SIGTERM)
            try:
                self._dnsmasq.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._dnsmasq.pid, signal.SIGKILL)
                self._dnsmasq.wait()
            if self._dnsmasq.stderr:
                self._dnsmasq.stderr.close()
            self._dnsmasq = None
        if self._dnsmasq_dir is not None:
            shutil.rmtree(self._dnsmasq_dir, ignore_errors=True)
            self._dnsmasq_dir = None
        delete_netns(self.name)
        release_netns_dir(self._netns_dir_was_mounted)

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()

    def set_dns_records(self, source: str, records: dict[str, str]) -> None:
        """Have the VPC's DNS answer ``records`` (name -> IPv4 address), replacing what ``source``
        gave before (an empty mapping removes them). A hosts file per source in dnsmasq's
        ``--hostsdir``, written under a dot name (which dnsmasq skips) and renamed into place, so
        dnsmasq never reads half a file."""
        if self._dnsmasq_dir is None:
            raise RuntimeError(f"{self.name} runs no DNS (dhcp=False)")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", source):
            raise ValueError(f"{source!r} is not a plain file name")
        directory = self._dnsmasq_dir / "dns"
        path = directory / source
        if not records:
            path.unlink(missing_ok=True)
            return
        for name, address in records.items():
            ipaddress.IPv4Address(address)
            if not re.fullmatch(r"[A-Za-z0-9.-]+", name):
                raise ValueError(f"{name!r} is not a DNS name")
        partial = directory / f".{source}.new"
        partial.write_text("".join(f"{address} {name}\n" for name, address in sorted(records.items())),
                           encoding="utf-8")
        os.chmod(partial, 0o644)
        os.replace(partial, path)

    def plug(self, host_netns: str, address: str, prefix_len: int, gateway: str, mac: str | None = None) -> str:
        """Connect a namespace to the bridge as ``eth0`` with ``address``; return the bridge port name.

        ``eth0`` gets ``mac`` (default :func:`mac_for` the address), and the VPC's DHCP hands that
        MAC this address, as EC2's does for an instance's primary interface.
        """
        mac = mac or mac_for(address)
        port = self.unplug(host_netns)  # a crashed run's port, if any
        ip("link", "add", port, "netns", self.name, "type", "veth",
           "peer", "name", "eth0", "address", mac, "netns", host_netns)
        ip("link", "set", port, "master", self.BRIDGE, "up", netns=self.name)
        ip("addr", "add", f"{address}/{prefix_len}", "dev", "eth0", netns=host_netns)
        ip("link", "set", "eth0", "up", netns=host_netns)
        # A route to the VPC's other subnets through the gateway: a default route that ends in this
        # namespace, which has no link to anything else.
        ip("route", "add", "default", "via", gateway, netns=host_netns)
        if self._dnsmasq_dir is not None:
            # dnsmasq reads new files in its hosts directory by itself (inotify).
            entry = self._dnsmasq_dir / "hosts" / host_netns
            entry.write_text(f"{mac},{address}\n", encoding="utf-8")
        return port

    def unplug(self, host_netns: str) -> str:
        """Delete the host's veth pair now (a namespace's links go only when its last user does)."""
        port = link_name(self.name, host_netns)
        if (NETNS_DIR / self.name).exists():
            ip("link", "del", port, netns=self.name, check=False)
        return port


def mac_for(address: str) -> str:
    """A locally administered MAC made of the IPv4 address (unique within the VPC, stable)."""
    return "02:ec:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


# --- a peering connection between two VPCs --------------------------------------------------------


class Peering:
    """A VPC peering connection between two sandbox VPCs, with the security groups' ports.

    ``Peering(hub_vpc, target_vpc, cidrs=("10.0.0.0/16", "10.1.0.0/16"), ports=((8081,), (8888,)))``:
    a veth pair between the two VPC namespaces (the peering), a route in each to the other's
    range (the route tables' entries), and, in each VPC namespace, nftables rules for what arrives
    over the peering: a new TCP connection from the other range to a host of this range passes
    only to ``ports`` of this side (its security group's ingress rules: the hub API's port in the
    hub's VPC, the notebook port in the target's), replies pass, everything else is refused; and
    nothing over the peering reaches the VPC namespace itself (its DNS, its endpoints and relays:
    a peered VPC's resolver and endpoints are not the other VPC's). Refused with a TCP reset (or
    ICMP), where AWS drops silently: a test sees the refusal at once instead of a timeout.

    Not transitive, as peering is not: each VPC routes only the other's range over it. The links
    live in the two VPC namespaces and go with them; :meth:`destroy` removes them sooner.
    """

    LINK_NET = ipaddress.ip_network("169.254.252.0/30")  # the two ends' addresses (link-local)
    TABLE = "ec2hub_peering"

    def __init__(self, a: Vpc, b: Vpc, *, cidrs: tuple[str, str], ports: tuple[tuple[int, ...], tuple[int, ...]]):
        self.vpcs = (a, b)
        self.cidrs = tuple(str(ipaddress.ip_network(c)) for c in cidrs)
        if ipaddress.ip_network(self.cidrs[0]).overlaps(ipaddress.ip_network(self.cidrs[1])):
            raise ValueError(f"peered VPCs need ranges that do not overlap: {self.cidrs}")
        self.ports = ports
        self.links = (link_name(a.name, b.name, "pcx"), link_name(b.name, a.name, "pcx"))
        hosts = list(self.LINK_NET.hosts())
        self.addresses = (str(hosts[0]), str(hosts[1]))

    def create(self) -> Peering:
        if shutil.which("nft") is None:
            raise RuntimeError("nft is missing: install nftables (scripts/install-system-deps.sh does)")
        (a, b), (link_a, link_b) = self.vpcs, self.links
        ip("link", "add", link_a, "netns", a.netns, "type", "veth", "peer", "name", link_b, "netns", b.netns)
        try:
            for side in (0, 1):
                vpc, link, other = self.vpcs[side], self.links[side], 1 - side
                ip("addr", "add", f"{self.addresses[side]}/{self.LINK_NET.prefixlen}", "dev", link, netns=vpc.netns)
                ip("link", "set", link, "up", netns=vpc.netns)
                ip("route", "add", self.cidrs[other], "via", self.addresses[other], "dev", link, netns=vpc.netns)
                self._filter(vpc.netns, link, source=self.cidrs[other], dest=self.cidrs[side], ports=self.ports[side])
        except BaseException:
            self.destroy()
            raise
        return self

    def _filter(self, netns: str, link: str, *, source: str, dest: str, ports: tuple[int, ...]) -> None:
        allowed = f"tcp dport {{ {', '.join(str(p) for p in ports)} }} ct state new accept" if ports else ""
        ruleset = f"""
table inet {self.TABLE} {{
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{link}" ct state established,related accept
    iifname "{link}" ip saddr {source} ip daddr {dest} {allowed}
    iifname "{link}" meta l4proto tcp reject with tcp reset
    iifname "{link}" reject
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname "{link}" ct state established,related accept
    iifname "{link}" meta l4proto tcp reject with tcp reset
    iifname "{link}" reject
  }}
}}
"""
        proc = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nft in {netns}: exit {proc.returncode}: {proc.stderr.strip()}")

    def destroy(self) -> None:
        a, _ = self.vpcs
        if (NETNS_DIR / a.netns).exists():
            ip("link", "del", self.links[0], netns=a.netns, check=False)  # its peer end goes with it
        for vpc in self.vpcs:
            if (NETNS_DIR / vpc.netns).exists():
                run("ip", "netns", "exec", vpc.netns, "nft", "delete", "table", "inet", self.TABLE, check=False)

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()
