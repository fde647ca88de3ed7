"""The hub settings document: what infra tells the hub about the platform it deployed.

``infra/settings.py`` writes this JSON document to an SSM String parameter; the hub bootstrap copies
it to ``/etc/ec2hub/settings.json``; ``bootstrap/hub/jupyterhub_config.py`` loads it and hands it to
:func:`ec2spawner.hubconfig.apply_settings`. The local sandbox writes the same document from the
stack it deployed into the AWS emulator. Nothing secret is in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .catalog import InstanceClass

SETTINGS_VERSION = 1
EXTRA_CONFIG_NAME_PATTERN = r"^[A-Za-z0-9_.-]+\.py$"


class ClassSettings(InstanceClass):
    """A catalog class plus the launch template infra made for it."""

    launch_template_id: Annotated[str, Field(pattern=r"^lt-[0-9a-f]+$")]
    # The AMI as the catalog names it; the template holds the resolved id.


class AuthSettings(BaseModel):
    """Which authenticator the hub runs (see bootstrap/hub and ec2spawner.hubconfig)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["native", "github", "generic-oauth", "dummy"] = "native"
    admin_users: list[str] = []
    # OAuth: client id and endpoints only; the client secret lives in SSM under the hub prefix.
    oauth_client_id: str | None = None
    oauth_callback_url: str | None = None
    oauth_authorize_url: str | None = None
    oauth_token_url: str | None = None
    oauth_userdata_url: str | None = None
    oauth_client_secret_parameter: str | None = None
    allowed_organizations: list[str] = []


class HubSettings(BaseModel):
    """Everything the hub needs to know about its platform."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = SETTINGS_VERSION
    region: str
    hub_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")]
    # Availability zone -> private subnet id for notebooks, tried in this order.
    subnets: Annotated[dict[str, str], Field(min_length=1)]
    classes: Annotated[list[ClassSettings], Field(min_length=1)]
    # SSM parameter name prefix for per-server secret env: <prefix><instance-id>. Starts and ends with /.
    secret_prefix: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]+/$")]
    efs_id: str | None = None
    # DynamoDB table of the hub lease (ec2spawner.lease): only its holder changes EC2. None: no lease.
    lease_table: str | None = None
    notebook_port: int = 8888
    hub_api_port: int = 8081
    proxy_port: int = 8000
    idle_timeout_s: int = 3600
    allow_named_servers: bool = True
    # JupyterHub's named_server_limit_per_user: named servers one user may have; 0: no limit.
    named_server_limit_per_user: Annotated[int, Field(ge=0)] = 0
    auth: AuthSettings = AuthSettings()
    # The repository's jupyterhub_config.d/: file name -> Python source, run after the platform's
    # own config in name order (ec2spawner.hubconfig.load_extra_config). Nothing secret in them.
    extra_config: dict[Annotated[str, Field(pattern=EXTRA_CONFIG_NAME_PATTERN)], str] = {}

    @classmethod
    def load(cls, path: str | Path) -> HubSettings:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))

    def dumps(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)
