"""The target stack: what notebooks of the classes that launch in one catalog target need there.

A catalog ``target`` (spawner/ec2spawner/catalog.py) is another AWS account and region. This stack
is deployed into it (``cdk deploy -c target=<name> -c hub_role_arn=<the hub stack's HubRoleArn>``,
docs/DEPLOY.md "Adding a target account") and makes:

- the notebooks' VPC (its own CIDR, for the peering with the hub's VPC), or uses an existing one
  by id (``target_vpc_id`` with ``target_subnets``);
- the notebook security group (the notebook port open to the hub's VPC range only), role and
  instance profile, and the launch templates of the classes that name this target, with
  infra/notebooks.py's own builder;
- the role the hub assumes: trusted by the hub's role alone and only with the target's
  ``external_id`` (``sts:ExternalId``), allowed what the hub role is allowed in its own account
  (infra/hub.py :func:`launch_statements`: the same RunInstances conditions, these templates,
  these subnets, the hub's tags) plus KMS through SSM for the secrets under the secret prefix.

Its outputs (``cdk deploy --outputs-file``) are what the hub stack's settings need about the
target (:func:`target_sites`): the hub then launches there with nothing copied by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aws_cdk import CfnOutput, Duration, Environment, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct
from ec2spawner.catalog import ROLE_ARN_PATTERN, Catalog

from .config import ConfigError, HubConfig
from .hub import launch_statements
from .network import PRIVATE_SUBNETS, Network
from .notebooks import NOTEBOOK_PORT, Notebooks

# The outputs the hub stack reads (target_sites), by key.
OUTPUT_ROLE = "HubAccessRoleArn"
OUTPUT_SUBNETS = "NotebookSubnets"
OUTPUT_TEMPLATES = "LaunchTemplates"
OUTPUT_SECRET_PREFIX = "SecretPrefix"
OUTPUT_CIDR = "VpcCidr"
# The hub's role may hold the assumed role's credentials this long; the spawner asks for an hour
# (ec2spawner.aws.AssumedRole) and botocore refreshes them 15 minutes before they expire.
MAX_SESSION = Duration.hours(1)
# A target VPC's range when the stack makes it: not the hub VPC's (CDK's 10.0.0.0/16).
DEFAULT_TARGET_CIDR = "10.1.0.0/16"


def target_stack_name(hub_id: str, target: str) -> str:
    return f"{hub_id}-{target}"


def role_path(role_arn: str) -> str:
    """The path of ``arn:aws:iam::<account>:role/<path/>name`` ("/" without one)."""
    parts = role_arn.split(":role/", 1)[1].split("/")
    return "/" + "".join(f"{p}/" for p in parts[:-1])


class Ec2HubTargetStack(Stack):
    """Notebooks of one catalog target, in its account and region, and the role the hub assumes."""

    def __init__(
        self,
        scope: Construct,
        *,
        config: HubConfig,
        catalog: Catalog,
        target: str,
        hub_role_arn: str,
        hub_cidr: str,
        cidr: str = DEFAULT_TARGET_CIDR,
        vpc_id: str | None = None,
        subnets: dict[str, str] | None = None,
    ) -> None:
        """``hub_role_arn``: the hub stack's HubRoleArn output. ``hub_cidr``: the hub VPC's range
        (its HubVpcCidr output), the only source the notebook port is open to. ``vpc_id`` with
        ``subnets`` (availability zone -> private subnet id): use that VPC instead of making one;
        ``cidr`` is then its range (the hub opens its API port to it)."""
        if target not in catalog.targets:
            raise ConfigError(f"target: {target!r} is not one of the catalog's targets "
                              f"(defined: {', '.join(sorted(catalog.targets)) or 'none'})")
        if not _is_role_arn(hub_role_arn):
            raise ConfigError(f"hub_role_arn: {hub_role_arn!r} is not an IAM role ARN (the hub stack's HubRoleArn output)")
        classes = catalog.classes_of(target)  # stock images only: the catalog refuses baked ones here
        if (vpc_id is None) != (subnets is None):
            raise ConfigError("target_vpc_id and target_subnets go together: the VPC and its private subnets")
        settings = catalog.targets[target]
        super().__init__(
            scope,
            target_stack_name(config.hub_id, target),
            stack_name=target_stack_name(config.hub_id, target),
            env=Environment(account=settings.account, region=settings.region),
            description=f"ec2hub: notebooks of hub {config.hub_id} in target {target}",
        )
        self.config = config
        self.target = target

        self.network: Network | None = None
        if vpc_id is None:
            self.network = Network(self, "Network", nat_gateways=1, vpc_endpoints=False, cidr=cidr)
            vpc = self.network.vpc
            notebook_subnets = {s.availability_zone: s.subnet_id
                                for s in vpc.select_subnets(subnet_group_name=PRIVATE_SUBNETS).subnets}
        else:
            vpc = ec2.Vpc.from_vpc_attributes(self, "Vpc", vpc_id=vpc_id, availability_zones=list(subnets),
                                              private_subnet_ids=list(subnets.values()), vpc_cidr_block=cidr)
            notebook_subnets = dict(subnets)

        self.notebooks = Notebooks(self, "Notebooks", vpc=vpc, catalog=catalog, hub_id=config.hub_id,
                                   secret_prefix=config.secret_prefix, target=target)
        # The hub reaches each server over the peering (docs/ARCHITECTURE.md, "Targets"); nothing else may.
        self.notebooks.security_group.add_ingress_rule(
            ec2.Peer.ipv4(hub_cidr), ec2.Port.tcp(NOTEBOOK_PORT),
            f"the hub's VPC (peered) to jupyterhub-singleuser on {NOTEBOOK_PORT}")

        self.hub_access = iam.Role(
            self,
            "HubAccess",
            role_name=settings.role_name,
            path=role_path(settings.role_arn),
            # Only the hub's role, and only with the external id: another principal of the hub's
            # account, or the hub's role tricked into acting for someone else, cannot assume it.
            assumed_by=iam.ArnPrincipal(hub_role_arn).with_conditions(
                {"StringEquals": {"sts:ExternalId": settings.external_id}}),
            max_session_duration=MAX_SESSION,
            description=f"ec2hub hub {config.hub_id}: launches and ends the notebooks of target {target}",
        )
        for statement in launch_statements(
            scope=self,
            hub_id=config.hub_id,
            launch_template_arns=self.notebooks.launch_template_arns,
            notebook_subnet_ids=list(notebook_subnets.values()),
            notebook_role=self.notebooks.role,
            notebook_instance_profile_arn=self.notebooks.instance_profile.instance_profile_arn,
            instance_types=[t for cls in classes for t in cls.instance_types],
            secret_prefix=config.secret_prefix,
        ):
            self.hub_access.add_to_policy(statement)
        secrets = self.format_arn(service="ssm", resource="parameter",
                                  resource_name=config.secret_prefix.lstrip("/") + "*")
        self.hub_access.add_to_policy(iam.PolicyStatement(
            sid="ServerSecretsViaSsm",
            actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
            resources=[self.format_arn(service="kms", resource="key", resource_name="*")],
            conditions={
                "StringEquals": {"kms:ViaService": f"ssm.{self.region}.amazonaws.com"},
                "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": secrets},
            },
        ))

        CfnOutput(self, OUTPUT_ROLE, value=self.hub_access.role_arn,
                  description="The role the hub assumes in this target")
        CfnOutput(self, OUTPUT_SUBNETS, value=Stack.of(self).to_json_string(notebook_subnets),
                  description="Availability zone -> notebook subnet (JSON), for the hub's settings")
        CfnOutput(self, OUTPUT_TEMPLATES,
                  value=Stack.of(self).to_json_string({s: t.ref for s, t in self.notebooks.launch_templates.items()}),
                  description="Class slug -> launch template id (JSON), for the hub's settings")
        CfnOutput(self, OUTPUT_SECRET_PREFIX, value=config.secret_prefix,
                  description="Per-server secrets in this target: <prefix><instance-id>")
        CfnOutput(self, OUTPUT_CIDR, value=vpc.vpc_cidr_block,
                  description="The notebooks' VPC range: the hub opens its API port to it")


def _is_role_arn(arn: str) -> bool:
    import re

    return re.match(ROLE_ARN_PATTERN, arn) is not None


@dataclass(frozen=True)
class TargetSite:
    """What the hub's settings say about one target (ec2spawner.settings.TargetSettings, plus the
    launch template of each of its classes)."""

    settings: dict[str, Any]
    launch_template_ids: dict[str, str]
    cidr: str  # the target VPC's range, which the hub's API port is open to


def target_sites(catalog: Catalog, outputs: dict[str, dict[str, str]], *, hub_id: str) -> dict[str, TargetSite]:
    """Every target some class launches in, from its target stack's outputs as ``cdk deploy
    --outputs-file`` writes them (stack name -> output key -> value, several stacks in one file).

    Raises ConfigError naming the command to run when a target's stack has not been deployed
    (or its outputs were not given), or its outputs lack a class's template.
    """
    sites = {}
    for name in sorted({c.target for c in catalog.classes if c.target is not None}):
        stack = target_stack_name(hub_id, name)
        found = outputs.get(stack)
        if found is None:
            raise ConfigError(
                f"target {name!r}: no outputs of its stack {stack}: deploy it first (cdk deploy -c target={name} "
                f"-c hub_role_arn=... --outputs-file targets.json) and give the file: -c target_outputs=targets.json")
        try:
            subnets = json.loads(found[OUTPUT_SUBNETS])
            templates = json.loads(found[OUTPUT_TEMPLATES])
            prefix = found[OUTPUT_SECRET_PREFIX]
            role = found[OUTPUT_ROLE]
            cidr = found[OUTPUT_CIDR]
        except (KeyError, ValueError) as error:
            raise ConfigError(f"target {name!r}: the outputs of {stack} are incomplete ({error}): deploy it again") from None
        target = catalog.targets[name]
        if role != target.role_arn:
            raise ConfigError(f"target {name!r}: its stack made the role {role}, the catalog names {target.role_arn}")
        missing = [c.slug for c in catalog.classes_of(name) if c.slug not in templates]
        if missing:
            raise ConfigError(f"class {missing[0]!r}: no launch template in {stack}: deploy it again (cdk deploy -c target={name})")
        sites[name] = TargetSite(
            settings={**target.model_dump(), "subnets": subnets, "secret_prefix": prefix},
            launch_template_ids={c.slug: templates[c.slug] for c in catalog.classes_of(name)},
            cidr=cidr,
        )
    return sites
