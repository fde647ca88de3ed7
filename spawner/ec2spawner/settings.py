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

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .catalog import InstanceClass, Target

SETTINGS_VERSION = 1
# The key of the JSON placeholder the stack puts in the OAuth client secret (infra.identity) until
# the operator puts the provider's secret there; the hub bootstrap refuses to start on it.
OAUTH_SECRET_PLACEHOLDER_KEY = "ec2hub-placeholder"
EXTRA_CONFIG_NAME_PATTERN = r"^[A-Za-z0-9_.-]+\.py$"
# The TTL of the hub API's A record (settings hub_dns_name): short, so that a server which looked up
# a lost hub host's address asks again within seconds of the new host's start. infra/dns.py makes
# the record with it, and the hub bootstrap UPSERTs it with it at every start of the hub.
HUB_DNS_TTL_S = 10
# A DNS name as Route 53 normalizes a record's (lower case, no final dot).
DNS_NAME_PATTERN = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"


class ClassSettings(InstanceClass):
    """A catalog class plus the launch template infra made for it."""

    launch_template_id: Annotated[str, Field(pattern=r"^lt-[0-9a-f]+$")]
    # The AMI as the catalog names it; the template holds the resolved id.


SECRET_PREFIX_PATTERN = r"^/[A-Za-z0-9_./-]+/$"


class TargetSettings(Target):
    """A catalog target plus what its target stack made there (infra/target_stack.py): the
    notebooks' subnets and the secrets' prefix in that account. A targeted class's
    ``launch_template_id`` is a template of that stack."""

    subnets: Annotated[dict[str, str], Field(min_length=1)]
    secret_prefix: Annotated[str, Field(pattern=SECRET_PREFIX_PATTERN)]


class AuthSettings(BaseModel):
    """Which authenticator the hub runs, and how (ec2spawner.hubconfig turns it into config).

    ``native``: NativeAuthenticator (sign-up, admin approval). ``github``, ``google``, ``oidc`` (any
    OpenID Connect provider, endpoints given) and ``cognito`` (the stack's user pool, an OpenID
    Connect provider whose groups are in the ID token's ``cognito:groups``): oauthenticator.
    ``dummy``: the local sandbox only. For the OAuth types this holds the client id and the
    endpoints only: the client secret is the Secrets Manager secret ``oauth_client_secret_name``,
    which the hub bootstrap fetches at every start (never into this document).
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["native", "github", "google", "oidc", "cognito", "dummy"] = "native"
    admin_users: list[str] = []
    oauth_client_id: str | None = None
    oauth_callback_url: str | None = None
    # oidc and cognito: the provider's endpoints (oauthenticator does no discovery).
    oauth_authorize_url: str | None = None
    oauth_token_url: str | None = None
    oauth_userdata_url: str | None = None
    oauth_client_secret_name: str | None = None
    # oidc and cognito: the claim that names the user and the one that lists their groups.
    username_claim: str | None = None
    groups_claim: str | None = None
    scopes: list[str] = []
    # Provider groups (github: "<org>:<team-slug>") whose members may sign in / are admins.
    allowed_groups: list[str] = []
    admin_groups: list[str] = []
    # Everyone the provider signs in may use the hub (cognito: the stack's own pool).
    allow_all: bool = False
    # github: members of these organizations may sign in. google: accounts of these domains.
    allowed_organizations: list[str] = []
    hosted_domains: list[str] = []
    # google: groups from Google Workspace. The service account (its JSON key is the Secrets
    # Manager secret ``google_service_account_secret_name``, fetched at every start like the client
    # secret) reads them acting as this Workspace administrator (a user name, in each domain).
    google_groups_admin: str | None = None
    google_service_account_secret_name: str | None = None


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
    secret_prefix: Annotated[str, Field(pattern=SECRET_PREFIX_PATTERN)]
    # Name -> another account and region (the catalog's targets); a class with ``target`` launches
    # there, through the role the hub assumes. Empty: every class launches in the hub's own.
    targets: dict[str, TargetSettings] = {}
    efs_id: str | None = None
    # The hub API's stable name (infra/dns.py): the A record ``hub_dns_name`` in the Route 53 private
    # hosted zone ``hub_dns_zone_id``, which the hub bootstrap points at the hub host's private IP
    # at every start; notebook servers call the hub API at http://<hub_dns_name>:<hub_api_port>.
    # None (both): servers are given the hub host's private IP, which a replaced host does not keep.
    hub_dns_zone_id: Annotated[str | None, Field(pattern=r"^[A-Z0-9]{1,32}$")] = None
    hub_dns_name: Annotated[str | None, Field(pattern=DNS_NAME_PATTERN, max_length=253)] = None
    # DynamoDB table of the hub lease (ec2spawner.lease): only its holder changes EC2. None: no lease.
    lease_table: str | None = None
    # DynamoDB table of the spend ledger (ec2spawner.spend). None: spend is not recorded.
    spend_table: str | None = None
    # Group -> monthly budget in USD; a member of a group past its budget cannot start servers.
    group_budgets_usd: dict[Annotated[str, Field(min_length=1, max_length=255)], Annotated[float, Field(ge=0)]] = {}
    # Whether hub admins may start servers past their groups' budgets.
    budget_exempt_admins: bool = False
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

    @model_validator(mode="after")
    def _hub_dns_together(self) -> HubSettings:
        if (self.hub_dns_zone_id is None) != (self.hub_dns_name is None):
            raise ValueError("hub_dns_zone_id and hub_dns_name go together: the record and the hosted zone that holds it")
        for cls in self.classes:
            if cls.target is not None and cls.target not in self.targets:
                raise ValueError(f"class {cls.slug!r}: target {cls.target!r} is not in targets")
        return self

    @classmethod
    def load(cls, path: str | Path) -> HubSettings:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))

    def dumps(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)
