"""An IMDSv2 emulator: the instance metadata service one simulated EC2 instance sees.

It answers at 169.254.169.254:80 inside the instance's network namespace (the listening socket is
created there, the server thread runs in the sandbox process). What it serves is what the
bootstrap scripts and botocore read on EC2
(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html):

- ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1..21600) returns a token;
- every ``GET`` needs ``X-aws-ec2-metadata-token`` with a live token, else 401 (IMDSv1 is off);
- under ``/latest/`` and every dated version (cloud-init asks ``/2021-03-23/`` and falls back to
  ``/2009-04-04/``): ``meta-data/instance-id``, ``hostname``, ``local-hostname``,
  ``placement/region``, ``placement/availability-zone``, ``local-ipv4``, ``mac``,
  ``tags/instance`` (the keys, one a line) and ``tags/instance/<key>`` (metadata tags enabled),
  ``iam/security-credentials/`` and ``.../<role>`` with dummy credentials (botocore's instance-role
  provider), ``dynamic/instance-identity/document``, and ``user-data`` (the bytes as launched,
  gzip or not; 404 when there is none, as EC2 answers);
- a directory (``meta-data/``, ``dynamic/instance-identity/``) lists its children, ``name/`` for
  subdirectories, which is how cloud-init's crawler walks the tree.

The hop limit of 1 is not emulated.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import unquote

from .netns import socket_in_netns

IMDS_ADDRESS = "169.254.169.254"
MAX_TTL_S = 21600
# /latest/... and every dated API version (/2009-04-04/..., /2021-03-23/...) serve the same tree.
_VERSIONED = re.compile(r"/(?:latest|\d{4}-\d{2}-\d{2})(?P<key>/.*)?")


def instance_access_key(instance_id: str) -> str:
    """The access key id of the role credentials an instance's IMDS hands out: one per instance,
    as on EC2 (where CloudTrail names the instance as the role session), so the emulator's trail
    (sandbox.emulator) says which instance made a call. ``ASIA`` + the id's hex digits, upper case."""
    return "ASIA" + re.sub(r"[^0-9A-Za-z]", "", instance_id.removeprefix("i-")).upper()


@dataclass
class ImdsData:
    """What an instance's metadata says about it."""

    instance_id: str
    region: str = "us-east-1"
    availability_zone: str | None = None
    local_ipv4: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    role: str | None = "ec2hub-notebook"
    account_id: str = "123456789012"
    instance_type: str = "t3.medium"
    mac: str = "02:00:00:00:00:01"
    # What RunInstances was given (raw, as EC2 stores it); cloud-init fetches it from user-data.
    user_data: bytes | None = None
    # botocore's instance-role provider accepts anything; moto accepts any key. Empty: the
    # instance's own (instance_access_key), so the emulator's trail can tell who made a call.
    access_key_id: str = ""
    secret_access_key: str = "sandbox-secret-access-key"
    session_token: str = "sandbox-session-token"

    def __post_init__(self) -> None:
        self.access_key_id = self.access_key_id or instance_access_key(self.instance_id)

    @property
    def az(self) -> str:
        return self.availability_zone or f"{self.region}a"

    @property
    def hostname(self) -> str:
        """EC2's private DNS name (``ip-10-0-1-17.ec2.internal`` in us-east-1)."""
        domain = "ec2.internal" if self.region == "us-east-1" else f"{self.region}.compute.internal"
        return "ip-" + self.local_ipv4.replace(".", "-") + "." + domain

    def meta_data(self) -> dict[str, str]:
        """Every leaf under /latest/meta-data/ as path -> text."""
        leaves = {
            "ami-id": "ami-0123456789abcdef0",
            "hostname": self.hostname,
            "local-hostname": self.hostname,
            "instance-action": "none",
            "instance-id": self.instance_id,
            "instance-type": self.instance_type,
            "local-ipv4": self.local_ipv4,
            "mac": self.mac,
            "placement/region": self.region,
            "placement/availability-zone": self.az,
            "tags/instance": "\n".join(self.tags),
        }
        for key, value in self.tags.items():
            leaves[f"tags/instance/{key}"] = value
        if self.role:
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            # "iam/security-credentials/" lists the role: the directory listing below answers it.
            leaves[f"iam/security-credentials/{self.role}"] = json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": now.isoformat().replace("+00:00", "Z"),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": self.access_key_id,
                    "SecretAccessKey": self.secret_access_key,
                    "Token": self.session_token,
                    "Expiration": (now + dt.timedelta(hours=6)).isoformat().replace("+00:00", "Z"),
                }
            )
        return leaves

    def identity_document(self) -> str:
        return json.dumps(
            {
                "accountId": self.account_id,
                "availabilityZone": self.az,
                "region": self.region,
                "instanceId": self.instance_id,
                "instanceType": self.instance_type,
                "privateIp": self.local_ipv4,
                "imageId": "ami-0123456789abcdef0",
                "architecture": "x86_64",
            }
        )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # requests go to the emulator's own list, not stderr
        self.server.emulator.requests.append(f"{self.command} {self.path}")

    def _reply(self, status: int, body: str | bytes = "", content_type: str = "text/plain") -> None:
        data = body if isinstance(body, bytes) else body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.rstrip("/") != "/latest/api/token":
            return self._reply(404, "Not Found")
        try:
            ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            return self._reply(400, "Missing or invalid X-aws-ec2-metadata-token-ttl-seconds")
        if not 1 <= ttl <= MAX_TTL_S:
            return self._reply(400, "X-aws-ec2-metadata-token-ttl-seconds out of range")
        self._reply(200, self.server.emulator.issue_token(ttl))

    def do_GET(self) -> None:
        emulator = self.server.emulator
        if not emulator.token_valid(self.headers.get("X-aws-ec2-metadata-token")):
            return self._reply(401, "Unauthorized")
        version = _VERSIONED.fullmatch(unquote(self.path.split("?", 1)[0]))
        if version is None:
            return self._reply(404, "Not Found")
        key = (version.group("key") or "").strip("/")
        if key == "user-data":
            data = emulator.data.user_data
            if not data:
                return self._reply(404, "Not Found")
            return self._reply(200, data, "application/octet-stream")
        leaves = {f"meta-data/{k}": v for k, v in emulator.data.meta_data().items()}
        leaves["dynamic/instance-identity/document"] = emulator.data.identity_document()
        if key in leaves:
            content_type = "application/json" if key.startswith("dynamic/") else "text/plain"
            return self._reply(200, leaves[key], content_type)
        # A directory: list its children, "child/" for subdirectories, as IMDS does.
        children: list[str] = []
        base = f"{key}/" if key else ""
        for leaf in [*leaves, *(["user-data"] if emulator.data.user_data else [])]:
            if leaf.startswith(base):
                head, _, rest = leaf[len(base) :].partition("/")
                entry = f"{head}/" if rest else head
                if entry not in children:
                    children.append(entry)
        if children:
            return self._reply(200, "\n".join(children))
        self._reply(404, "Not Found")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: ImdsEmulator


class ImdsEmulator:
    """Serve :class:`ImdsData` at ``address:port`` inside network namespace ``netns``."""

    def __init__(self, data: ImdsData, *, netns: str | None, address: str = IMDS_ADDRESS, port: int = 80):
        self.data = data
        self.netns, self.address, self.port = netns, address, port
        self.requests: list[str] = []
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def issue_token(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
        return token

    def token_valid(self, token: str | None) -> bool:
        with self._lock:
            expiry = self._tokens.get(token or "")
        return expiry is not None and expiry > time.monotonic()

    def start(self) -> ImdsEmulator:
        server = _Server((self.address, self.port), _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = socket_in_netns(self.netns)
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        server.emulator = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"imds-{self.netns}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
