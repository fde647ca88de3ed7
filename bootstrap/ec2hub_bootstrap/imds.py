"""An IMDSv2 client (standard library only) and the instance's ec2hub:* tags."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request

from .host import Console

IMDS = "http://169.254.169.254"
IMDS_WAIT_S = 300
TOKEN_TTL_S = 21600


class Imds:
    """Instance metadata over IMDSv2 (a session token on every request, renewed once on 401)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.token: str | None = None

    def _token(self) -> str:
        request = urllib.request.Request(
            IMDS + "/latest/api/token", method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
        )
        with urllib.request.urlopen(request, timeout=2) as resp:
            return resp.read().decode()

    def wait(self) -> Imds:
        """Get a token, waiting up to IMDS_WAIT_S for the endpoint (early in boot it may lag)."""
        deadline, delay = time.monotonic() + IMDS_WAIT_S, 0.2
        while True:
            try:
                self.token = self._token()
                return self
            except (OSError, urllib.error.URLError) as exc:
                if time.monotonic() > deadline:
                    self.console.die("imds", f"no IMDSv2 at {IMDS} after {IMDS_WAIT_S}s ({exc})")
                time.sleep(delay)
                delay = min(delay * 2, 5)

    def get(self, path: str, missing_ok: bool = False) -> str | None:
        """``/latest/<path>`` as text; None for a 404 when ``missing_ok``."""
        request = urllib.request.Request(f"{IMDS}/latest/{path}", headers={"X-aws-ec2-metadata-token": self.token})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            if exc.code == 401:  # token expired: get a new one once
                self.token = self._token()
                return self.get(path, missing_ok)
            raise


def read_tags(imds: Imds, *, required: tuple[str, ...], who_sets: str) -> dict[str, str]:
    """The instance's ``ec2hub:*`` tags (metadata tags must be enabled); die if one of
    ``required`` is missing or empty, naming ``who_sets`` it."""
    keys = imds.get("meta-data/tags/instance", missing_ok=True)
    if keys is None:
        imds.console.die("tags", "instance metadata tags are off: the instance needs "
                         "MetadataOptions.InstanceMetadataTags=enabled")
    tags = {}
    for key in keys.splitlines():
        if key.startswith("ec2hub:"):
            tags[key] = imds.get("meta-data/tags/instance/" + urllib.parse.quote(key, safe=":"))
    for key in required:
        if not tags.get(key):
            imds.console.die("tags", f"tag {key} is missing: {who_sets} sets it")
    return tags
