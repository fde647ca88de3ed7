"""The hub settings document (``ec2spawner.settings.HubSettings``) and the SSM parameter holding it.

:func:`settings_document` is pure: given values (CDK tokens in the stack, plain strings in tests) it
returns the mapping that the hub bootstrap copies to ``/etc/ec2hub/settings.json``.
:class:`SettingsParameter` serializes it with ``Stack.to_json_string`` (tokens become
CloudFormation references inside the JSON) into the String parameter ``/ec2hub/<hub_id>/settings``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_ssm as ssm
from constructs import Construct
from ec2spawner.catalog import Catalog
from ec2spawner.hubconfig import ExtraConfigError, compile_extra_config
from ec2spawner.settings import EXTRA_CONFIG_NAME_PATTERN

from .config import ConfigError
from .hub import HUB_API_PORT, PROXY_PORT
from .notebooks import NOTEBOOK_PORT

# Parameter values: 4 KB in the Standard tier, 8 KB in the Advanced tier (SSM quotas). Estimates
# keep some headroom for ids longer than the samples.
# jupyterhub_config.d file names, as HubSettings.extra_config accepts them.
EXTRA_CONFIG_NAME = re.compile(EXTRA_CONFIG_NAME_PATTERN)
STANDARD_TIER_LIMIT = 4096
ADVANCED_TIER_LIMIT = 8192
HEADROOM = 256


def parameter_tier(size_estimate: int) -> ssm.ParameterTier:
    """The cheapest tier that holds the document; too big for any is an error at synth."""
    if size_estimate <= STANDARD_TIER_LIMIT - HEADROOM:
        return ssm.ParameterTier.STANDARD
    if size_estimate <= ADVANCED_TIER_LIMIT - HEADROOM:
        return ssm.ParameterTier.ADVANCED
    raise ConfigError(
        f"the hub settings would be about {size_estimate} bytes, but an SSM parameter holds at most "
        f"{ADVANCED_TIER_LIMIT}: use fewer classes, shorter descriptions in the catalog or smaller "
        "jupyterhub_config.d files"
    )


def settings_document(
    *,
    region: str,
    hub_id: str,
    subnets: dict[str, str],
    catalog: Catalog,
    launch_template_ids: dict[str, str],
    secret_prefix: str,
    efs_id: str | None,
    admin_users: list[str],
    lease_table: str | None = None,
    idle_timeout_s: int = 3600,
    allow_named_servers: bool = True,
    named_server_limit_per_user: int = 0,
    extra_config: dict[str, str] | None = None,
    spend_table: str | None = None,
    group_budgets_usd: dict[str, float] | None = None,
    budget_exempt_admins: bool = False,
    auth: dict[str, Any] | None = None,
    hub_dns_zone_id: str | None = None,
    hub_dns_name: str | None = None,
    targets: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The HubSettings mapping: catalog classes (as written) plus each class's launch template id;
    ``extra_config`` is the repository's jupyterhub_config.d/ (:func:`extra_config_files`).

    ``auth`` is the sign-in mapping (infra.identity.auth_settings); None: native sign-in with
    ``admin_users``. ``hub_dns_zone_id`` and ``hub_dns_name`` (infra.dns): the private hosted zone
    and the record the hub points at itself at every start, the name notebooks call the hub API at.
    ``targets``: name -> TargetSettings mapping (infra.target_stack.target_sites); the targeted
    classes' templates are in ``launch_template_ids`` too.
    """
    classes = [
        {
            **cls.model_dump(mode="json", exclude_none=True),
            "launch_template_id": launch_template_ids[cls.slug],
        }
        for cls in catalog.classes
    ]
    document: dict[str, Any] = {
        "version": 1,
        "region": region,
        "hub_id": hub_id,
        "subnets": dict(subnets),
        "classes": classes,
        "secret_prefix": secret_prefix,
        "notebook_port": NOTEBOOK_PORT,
        "hub_api_port": HUB_API_PORT,
        "proxy_port": PROXY_PORT,
        "idle_timeout_s": idle_timeout_s,
        "allow_named_servers": allow_named_servers,
        "named_server_limit_per_user": named_server_limit_per_user,
        "auth": auth or {"type": "native", "admin_users": list(admin_users)},
    }
    if targets:
        document["targets"] = dict(sorted(targets.items()))
    if extra_config:
        document["extra_config"] = dict(sorted(extra_config.items()))
    if efs_id is not None:
        document["efs_id"] = efs_id
    if lease_table is not None:
        document["lease_table"] = lease_table
    if hub_dns_name is not None:
        document["hub_dns_zone_id"] = hub_dns_zone_id
        document["hub_dns_name"] = hub_dns_name
    if spend_table is not None:
        document["spend_table"] = spend_table
        document["group_budgets_usd"] = dict(group_budgets_usd or {})
        document["budget_exempt_admins"] = budget_exempt_admins
    return document


def extra_config_files(directory: Path) -> dict[str, str]:
    """The ``*.py`` files of a jupyterhub_config.d/ folder (none if it does not exist), by name.

    Each is compiled here, so a syntax error fails the synth with one line naming the file rather
    than the hub's next start.
    """
    files = {}
    for path in sorted(directory.glob("*.py")) if directory.is_dir() else []:
        label = f"{directory.name}/{path.name}"
        if not EXTRA_CONFIG_NAME.match(path.name):
            raise ConfigError(f"{label}: file names may have only letters, digits, '.', '_' and '-'")
        try:
            source = path.read_text(encoding="utf-8")
            compile_extra_config(label, source)
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{label}: cannot read it: {error}") from None
        except ExtraConfigError as error:
            raise ConfigError(str(error)) from None
        files[path.name] = source
    return files


def estimated_size(document: dict[str, Any]) -> int:
    """Length of the document with its ids at their real lengths (tokens have no length at synth)."""
    sample_id = "0123456789abcdef0"
    sample = {
        **document,
        "subnets": {az: f"subnet-{sample_id}" for az in document["subnets"]},
        "classes": [
            {**cls, "launch_template_id": f"lt-{sample_id}"}
            for cls in document["classes"]
        ],
    }
    if "efs_id" in document:
        sample["efs_id"] = f"fs-{sample_id}"
    if "hub_dns_zone_id" in document:
        sample["hub_dns_zone_id"] = "Z0123456789ABCDEFGHIJ"  # Route 53 zone ids: Z + up to 31 characters
    if "spend_table" in document:
        # CloudFormation names the table <stack>-<logical id>-<13 characters>.
        sample["spend_table"] = f"{document['hub_id']}-HubSpendTable0123ABCD-ABCDEFGHIJ123"
    return len(json.dumps(sample))


class SettingsParameter(Construct):
    """The SSM String parameter with the settings JSON (nothing secret in it)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        parameter_name: str,
        document: dict[str, Any],
    ) -> None:
        super().__init__(scope, construct_id)
        self.parameter = ssm.StringParameter(
            self,
            "Parameter",
            parameter_name=parameter_name,
            description="ec2hub hub settings (HubSettings JSON), copied to /etc/ec2hub/settings.json",
            string_value=Stack.of(self).to_json_string(document),
            tier=parameter_tier(estimated_size(document)),
        )
