"""A real PostgreSQL server for the sandbox and the tests: what the stack's RDS instance is on AWS.

The emulator's RDS records a DB instance but runs no database. This starts Debian's PostgreSQL
(``scripts/install-system-deps.sh`` installs ``postgresql``) on a scratch data directory, as the
unprivileged ``postgres`` user, on 127.0.0.1 only, with TLS (a self-signed certificate, since the
hub connects with ``sslmode=require`` as RDS requires) and password (SCRAM) sign-in, like RDS.
Callers put it where the hub expects its database (a relay on the VPC address the stack's RDS
endpoint names, see :mod:`sandbox.runner`).

The machine's own ``postgresql.service`` is never started: nothing here touches it, and booted
instances mask it (:data:`sandbox.host.MASKED_UNITS`).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

SERVER_USER = "postgres"
SCRATCH_DIR = "/var/tmp"
SCRATCH_PREFIX = "ec2hub-pg-"
SUPERUSER = "postgres"
# Scratch servers hold nothing worth an fsync (a crash loses a test's database, not data).
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "ssl": "on",
    "ssl_cert_file": "'server.crt'",
    "ssl_key_file": "'server.key'",
    "password_encryption": "'scram-sha-256'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "50",
    "log_destination": "'stderr'",
}


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's programs (Debian keeps them in /usr/lib/postgresql/N/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("no PostgreSQL server: install Debian's postgresql (scripts/install-system-deps.sh does)")
    return found[-1].parent


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1:``port`` (0: a free one), data under a scratch directory."""

    def __init__(self, *, port: int = 0, name: str = "test") -> None:
        self.bindir = postgres_bindir()
        self.port = port
        # Not under /tmp/pytest-of-root or a 0700 clone: the postgres user must reach it. The
        # name keeps one user's leftovers apart from another's (cleanup_leftovers).
        self.root = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{name}-", dir=SCRATCH_DIR))
        self.superuser_password = secrets.token_hex(16)
        self._proc: subprocess.Popen | None = None
        self.log_path = self.root / "server.log"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_server_user(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        user = pwd.getpwnam(SERVER_USER)
        prefix = [] if os.geteuid() == user.pw_uid else [
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True, **kwargs)

    def start(self, timeout: float = 60) -> Self:
        """initdb, a self-signed certificate, then the server; returns once it takes connections."""
        user = pwd.getpwnam(SERVER_USER)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        pwfile = self.root / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n")
        os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._as_server_user([str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                              f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                              "--locale=C", "--no-sync"])
        pwfile.unlink()
        self._as_server_user(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                              "-subj", "/CN=ec2hub-sandbox-database", "-keyout", str(self.data / "server.key"),
                              "-out", str(self.data / "server.crt")])
        os.chmod(self.data / "server.key", 0o600)
        if not self.port:
            self.port = _free_port()
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.root}'"}
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# ec2hub scratch server\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        # Like RDS: TLS and a password, nothing else (the local socket too needs the password).
        (self.data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        log = open(self.log_path, "wb")  # noqa: SIM115 (the server's stderr for its lifetime)
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        self._proc = subprocess.Popen([*prefix, str(self.bindir / "postgres"), "-D", str(self.data)],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        log.close()
        try:
            _wait(self._ready, timeout, f"PostgreSQL on 127.0.0.1:{self.port} taking connections")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited {self._proc.returncode}: {self.log[-2000:]}")
        try:
            with self.connect():
                return True
        except Exception:  # noqa: BLE001 (psycopg.OperationalError until it listens)
            return False

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.superuser_password,
                               dbname=dbname, sslmode="require", connect_timeout=5, autocommit=True)

    def create_database(self, name: str, owner: str, password: str) -> None:
        """A login role ``owner`` with ``password`` and a database ``name`` it owns (what RDS makes
        of MasterUsername, MasterUserPassword and DBName)."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(owner), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its data."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cleanup_leftovers(name: str) -> list[int]:
    """Stop the servers a crashed run named ``name`` left (by their data directory, never by
    program name) and remove their directories; the pids signalled."""
    pattern = f"{SCRATCH_DIR}/{SCRATCH_PREFIX}{name}-"
    killed = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"/postgres") and any(a.startswith(pattern.encode()) for a in argv):
            try:
                os.kill(int(cmdline.parent.name), signal.SIGQUIT)  # immediate shutdown
                killed.append(int(cmdline.parent.name))
            except ProcessLookupError:
                pass
    for _ in range(100):
        if not any(Path(f"/proc/{pid}").exists() for pid in killed):
            break
        time.sleep(0.1)
    for leftover in Path(SCRATCH_DIR).glob(f"{SCRATCH_PREFIX}{name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return killed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} within {timeout:.0f} s")
