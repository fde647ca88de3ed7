"""User data for the launch templates and the hub: the bootstrap scripts, byte for byte.

EC2 takes at most 16 KB of user data "in raw form, before it is base64-encoded" (EC2 user guide,
"Run commands when you launch an EC2 instance with user data input"). A bigger script is sent
gzip-compressed, which EC2 counts as raw bytes and cloud-init decompresses before running it
(cloud-init docs, "User-data formats": "gzip compressed content"). A script too big even then is an
error at synth, not a failed launch at spawn time. Compression is deterministic (mtime 0), so the
same script always gives the same template.
"""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_ROOT, ConfigError

MAX_USER_DATA_BYTES = 16 * 1024
GZIP_MAGIC = b"\x1f\x8b"


def _display(path: Path) -> str:
    return (
        str(path.relative_to(REPO_ROOT))
        if path.is_relative_to(REPO_ROOT)
        else str(path)
    )


@dataclass(frozen=True)
class BootstrapUserData:
    """A bootstrap script and the bytes EC2 receives for it."""

    path: Path
    script: bytes
    payload: bytes

    @property
    def compressed(self) -> bool:
        return self.payload != self.script

    @property
    def base64(self) -> str:
        return base64.b64encode(self.payload).decode("ascii")

    @property
    def notice(self) -> str | None:
        """A synth-time warning when the script had to be compressed."""
        if not self.compressed:
            return None
        return (
            f"{_display(self.path)} is {len(self.script)} bytes, over EC2's {MAX_USER_DATA_BYTES}-byte "
            f"user-data limit: it is sent gzip-compressed ({len(self.payload)} bytes), which "
            "cloud-init unpacks at boot. Anything else that runs this user data must gunzip it first."
        )


def load_user_data(path: Path) -> BootstrapUserData:
    """Read a bootstrap script; compress it only if EC2 would refuse it as it is."""
    try:
        script = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{_display(path)}: cannot read user data: {error.strerror}"
        ) from None
    payload = script
    if len(script) > MAX_USER_DATA_BYTES:
        payload = gzip.compress(script, compresslevel=9, mtime=0)
    if len(payload) > MAX_USER_DATA_BYTES:
        raise ConfigError(
            f"{_display(path)}: {len(script)} bytes ({len(payload)} gzip-compressed), but EC2 accepts "
            f"at most {MAX_USER_DATA_BYTES} bytes of user data"
        )
    return BootstrapUserData(path=path, script=script, payload=payload)
