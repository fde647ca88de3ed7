"""The one ec2hub Stack: builds each concern's construct and does all the wiring between them.

Security-group rules, IAM grants and the settings document live here, where every resource they
connect is in view.
"""

from __future__ import annotations

from aws_cdk import Annotations, ArnFormat, CfnOutput, Environment, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct
from ec2spawner.catalog import Catalog

from .admin import TAG_ADMIN_PASSWORD_SECRET, AdminAccount
from .config import HubConfig
from .dns import HubDns, delete_record_command, record_statement
from .hub import (
    AL2023_PARAMETER,
    HUB_API_PORT,
    PROXY_PORT,
    Hub,
    spawner_statements,
    spend_statements,
)
from .identity import IdentityProvider, auth_settings, callback_url
from .images import (
    ClassImages,
    hub_image_parameter_name,
    image_parameter_name,
    launch_image,
)
from .network import PRIVATE_SUBNETS, Network
from .notebooks import NOTEBOOK_PORT, Notebooks
from .observability import Observability
from .settings import SettingsParameter, extra_config_files, settings_document
from .state import DATABASE_PORT, HubState
from .storage import Storage, access_point_statements, file_system_statements
from .target_stack import target_sites


class Ec2HubStack(Stack):
    """JupyterHub with one EC2 instance per notebook server, for one hub id (= stack name)."""

    def __init__(
        self, scope: Construct, *, config: HubConfig, catalog: Catalog,
        target_outputs: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """``target_outputs``: the outputs of the target stacks of the catalog's targets
        (infra/target_stack.py, as ``cdk deploy --outputs-file`` writes them); a class that
        launches in a target whose outputs are missing is a ConfigError."""
        sites = target_sites(catalog, target_outputs or {}, hub_id=config.hub_id)
        super().__init__(
            scope,
            config.hub_id,
            stack_name=config.hub_id,
            env=Environment(account=config.account, region=config.region),
            description="ec2hub: JupyterHub where every notebook server runs on its own EC2 instance",
        )
        self.config = config

        self.network = Network(
            self,
            "Network",
            nat_gateways=config.nat_gateways,
            vpc_endpoints=config.vpc_endpoints,
        )
        vpc = self.network.vpc
        private = self.network.private_subnets

        self.notebooks = Notebooks(
            self,
            "Notebooks",
            vpc=vpc,
            catalog=catalog,
            hub_id=config.hub_id,
            secret_prefix=config.secret_prefix,
            images={c.slug: launch_image(config.hub_id, c) for c in catalog.classes if c.baked},
        )
        self.storage = Storage(self, "Storage", vpc=vpc, subnets=private)
        # The hub's database and secrets: nothing the hub must keep lives on its host.
        self.state = HubState(
            self,
            "State",
            vpc=vpc,
            subnets=private,
            hub_id=config.hub_id,
            instance_type=config.database_instance_type,
        )

        # --- the first admin: a generated password only the hub may read ------------------------
        # (native sign-in only: with an identity provider the admin signs in there)
        self.admin: AdminAccount | None = None
        if not config.oauth:
            self.admin = AdminAccount(
                self, "Admin", hub_id=config.hub_id, admin_user=config.admin_user
            )
        # The hub host finds its secrets by these tags (ARCHITECTURE.md §5).
        secret_tags = dict(self.state.secret_names)
        if self.admin is not None:
            secret_tags[TAG_ADMIN_PASSWORD_SECRET] = self.admin.secret_name

        self.hub = Hub(
            self,
            "Hub",
            vpc=vpc,
            hub_subnets=private,
            alb_subnets=self.network.public_subnets,
            hub_id=config.hub_id,
            instance_type=config.hub_instance_type,
            hub_ami=config.hub_ami,
            hub_image_parameter=hub_image_parameter_name(config.hub_id) if config.hub_baked_image else None,
            lease_table_name=config.lease_table_name,
            settings_parameter_name=config.settings_parameter_name,
            admin_user=config.admin_user,
            certificate_arn=config.certificate_arn,
            allowed_ingress_cidr=config.allowed_ingress_cidr,
            secret_tags=secret_tags,
        )

        # --- baked classes: Image Builder pipelines and the parameters their templates read -----
        self.images = ClassImages(
            self,
            "Images",
            vpc=vpc,
            build_subnet=vpc.select_subnets(subnet_group_name=PRIVATE_SUBNETS).subnets[0],
            catalog=catalog,
            hub_id=config.hub_id,
            versions_kept=config.image_versions_kept,
            build_schedule=config.image_build_schedule,
            hub_parent=(config.hub_ami or f"ssm:{AL2023_PARAMETER}") if config.hub_baked_image else None,
            hub_instance_type=config.hub_instance_type,
        )
        if self.images.hub_parameter is not None:
            # EC2 checks that a resolve:ssm: image parameter exists when it stores the hub's
            # launch template version (as for the classes' templates below).
            self.hub.launch_template.node.add_dependency(self.images.hub_parameter)
        for slug, parameter in self.images.parameters.items():
            # EC2 checks that a resolve:ssm: image parameter exists when it stores the version.
            self.notebooks.launch_templates[slug].node.add_dependency(parameter)

        # --- network paths: each one named, nothing else open ----------------------------------
        notebook_sg = self.notebooks.security_group
        hub_sg = self.hub.security_group
        notebook_sg.add_ingress_rule(
            hub_sg,
            ec2.Port.tcp(NOTEBOOK_PORT),
            "hub proxy and spawner to jupyterhub-singleuser",
        )
        hub_sg.add_ingress_rule(
            notebook_sg, ec2.Port.tcp(HUB_API_PORT), "notebooks to the hub API"
        )
        # Ingress on the hub and the matching egress on the (closed-outbound) ALB group.
        self.hub.load_balancer.connections.allow_to(
            hub_sg, ec2.Port.tcp(PROXY_PORT), "load balancer to the proxy"
        )
        self.state.database.connections.allow_from(
            hub_sg, ec2.Port.tcp(DATABASE_PORT), "the hub to its database"
        )
        endpoint_sg = self.network.endpoint_security_group
        if endpoint_sg is not None and self.images.security_group is not None:
            # Image Builder drives the build instance through Systems Manager.
            endpoint_sg.add_ingress_rule(
                self.images.security_group, ec2.Port.tcp(443), "AWS APIs from image builds"
            )
        for peer, who in ((notebook_sg, "notebooks"), (hub_sg, "hub")):
            if endpoint_sg is not None:
                endpoint_sg.add_ingress_rule(
                    peer, ec2.Port.tcp(443), f"AWS APIs from {who}"
                )
            self.storage.file_system.connections.allow_default_port_from(
                peer, f"NFS from {who}"
            )

        # --- who may mount the homes, and the hub making each user's access point ---------------
        for statement in file_system_statements(notebook_role=self.notebooks.role):
            self.storage.file_system.add_to_resource_policy(statement)
        # A managed policy of its own, as the secrets' below: the role's inline policy is near
        # IAM's 10,240-character limit with many classes.
        self.hub_homes_policy = iam.ManagedPolicy(
            self,
            "HubHomesPolicy",
            description="ec2hub hub host: make and find its users' home access points on EFS",
            roles=[self.hub.role],
            statements=access_point_statements(
                scope=self, hub_id=config.hub_id,
                # The ARN from the id (a Ref), not the file system's Arn attribute: the same
                # value, and the emulator's CloudFormation cannot read that attribute.
                file_system_arn=self.format_arn(service="elasticfilesystem", resource="file-system",
                                                resource_name=self.storage.file_system.file_system_id),
            ),
        )

        # --- the hub role ----------------------------------------------------------------------
        notebook_subnets = vpc.select_subnets(subnet_group_name=PRIVATE_SUBNETS).subnets
        for statement in spawner_statements(
            scope=self,
            hub_id=config.hub_id,
            launch_template_arns=self.notebooks.launch_template_arns,
            notebook_subnet_ids=[s.subnet_id for s in notebook_subnets],
            notebook_role=self.notebooks.role,
            notebook_instance_profile_arn=self.notebooks.instance_profile.instance_profile_arn,
            instance_types=[t for cls in catalog.classes_of(None) for t in cls.instance_types],
            ssm_prefix=config.ssm_prefix,
            secret_prefix=config.secret_prefix,
            spawner_asset=self.hub.spawner_asset,
        ):
            self.hub.role.add_to_principal_policy(statement)

        # --- targets: the hub's role may assume each target's role, and nothing else there -------
        for name, site in sites.items():
            # Its notebooks call the hub API over the peering (docs/ARCHITECTURE.md §19).
            self.hub.security_group.add_ingress_rule(
                ec2.Peer.ipv4(site.cidr), ec2.Port.tcp(HUB_API_PORT), f"notebooks of target {name} to the hub API"
            )
        if sites:
            self.hub.role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="AssumeTargetRoles",
                    actions=["sts:AssumeRole"],
                    resources=sorted(catalog.targets[name].role_arn for name in sites),
                )
            )

        # --- baked images: EC2 resolves resolve:ssm: with the launching principal's permissions
        baked = sorted(self.images.parameters)
        if baked:
            self.hub.role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="ResolveClassImages",
                    actions=["ssm:GetParameters"],
                    resources=[
                        self.format_arn(
                            service="ssm",
                            resource="parameter",
                            resource_name=image_parameter_name(config.hub_id, slug).lstrip("/"),
                        )
                        for slug in baked
                    ],
                )
            )

        # --- the hub lease: its own item only ----------------------------------------------------
        self.hub.role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="HoldHubLease",
                actions=["dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem"],
                resources=[self.hub.lease_table.table_arn],
                # Only the item whose partition key is this hub id (DynamoDB developer guide,
                # "Using IAM policy conditions for fine-grained access control").
                conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [config.hub_id]}},
            )
        )

        # --- the hub host's first boot tells CloudFormation its hub answers (the group's signal) ----
        # A managed policy of its own, as the DNS one below: the inline one is near IAM's limit.
        self.hub_signal_policy = iam.ManagedPolicy(
            self,
            "HubSignalPolicy",
            description="ec2hub hub host: signal to CloudFormation that a new hub answers",
            roles=[self.hub.role],
            statements=[
                iam.PolicyStatement(
                    sid="SignalHubGroup",
                    actions=["cloudformation:SignalResource"],
                    # This stack only (its ARN ends in an id CloudFormation generates);
                    # SignalResource has no condition key for the logical id.
                    resources=[self.format_arn(service="cloudformation", resource="stack",
                                               resource_name=f"{self.stack_name}/*")],
                )
            ],
        )

        # --- the hub API's stable name: the hub host UPSERTs its one record -----------------------
        # A managed policy of its own, as the secrets' below: the inline one is near IAM's limit.
        self.dns = HubDns(self, "Dns", vpc=vpc, zone_name=config.hub_dns_zone)
        self.hub_dns_policy = iam.ManagedPolicy(
            self,
            "HubDnsPolicy",
            description="ec2hub hub host: point the hub API's DNS name at itself",
            roles=[self.hub.role],
            statements=[record_statement(zone=self.dns.zone, record_name=self.dns.record_name)],
        )

        # --- the spend ledger and the prices ------------------------------------------------------
        for statement in spend_statements(spend_table_arn=self.hub.spend_table.table_arn):
            self.hub.role.add_to_principal_policy(statement)

        # --- logs and alarms: each host role writes only its own log group -----------------------
        self.observability = Observability(
            self,
            "Observability",
            hub_id=config.hub_id,
            log_key=self.network.log_key,
            retention_days=config.log_retention_days,
            alarm_email=config.alarm_email,
        )
        # logs:CreateLogStream and logs:PutLogEvents on the one group, nothing else.
        self.observability.log_groups["hub"].grant_write(self.hub.role)
        self.observability.log_groups["notebook"].grant_write(self.notebooks.role)

        def secret_arn(name: str) -> str:
            # Secrets Manager appends a hyphen and 6 random characters to a secret's name in
            # its ARN (Secrets Manager user guide, "Secret ARN"): '??????' matches exactly those.
            return self.format_arn(
                service="secretsmanager",
                resource="secret",
                resource_name=f"{name}-??????",
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            )

        # --- the hub's secrets: the admin's password, the database, cookie secret, proxy token ---
        # A managed policy of its own: the role's inline policy is near IAM's 10,240-character
        # limit with many classes (one launch template ARN each), and these ARNs would tip it.
        own_secrets = [*([self.admin.secret_name] if self.admin else []), *self.state.secret_names.values()]
        self.hub_secrets_policy = iam.ManagedPolicy(
            self,
            "HubSecretsPolicy",
            description=f"ec2hub hub host: read its own {('no', 'one', 'two', 'three', 'four')[len(own_secrets)]} secrets",
            roles=[self.hub.role],
        )
        self.hub_secrets_policy.add_statements(
            iam.PolicyStatement(
                sid="ReadHubSecrets",
                actions=["secretsmanager:GetSecretValue"],
                # Exactly the admin's (native sign-in) and the state's secrets.
                resources=[secret_arn(name) for name in own_secrets],
            )
        )
        # The hub connects at its first start: the database comes first.
        self.hub.group.node.add_dependency(self.state.database)

        # --- sign-in through an identity provider: its client secret, only the hub reads it ------
        scheme = "https" if config.https else "http"
        host = config.domain_name or self.hub.load_balancer.load_balancer_dns_name
        hub_url = f"{scheme}://{host}/"
        self.identity: IdentityProvider | None = None
        auth = auth_settings(config, callback=callback_url(hub_url), secret_name=None)
        if config.oauth:
            self.identity = IdentityProvider(
                self,
                "Identity",
                config=config,
                callback=callback_url(hub_url),
                groups=sorted(
                    {g for cls in catalog.classes for g in cls.allowed_groups} | set(config.oauth_admin_groups)
                ),
            )
            readable = [self.identity.secret_name]
            if self.identity.google_key_secret_name:
                readable.append(self.identity.google_key_secret_name)
            self.hub.role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="ReadOAuthClientSecret",
                    actions=["secretsmanager:GetSecretValue"],
                    resources=[secret_arn(name) for name in readable],
                )
            )
            cognito_client = self.identity.client
            auth = auth_settings(
                config,
                callback=callback_url(hub_url),
                secret_name=self.identity.secret_name,
                google_key_secret_name=self.identity.google_key_secret_name,
                cognito_client_id=cognito_client.user_pool_client_id if cognito_client else None,
                cognito_base_url=self.identity.domain.base_url() if self.identity.domain else None,
            )

        # --- settings --------------------------------------------------------------------------
        document = settings_document(
            region=self.region,
            hub_id=config.hub_id,
            subnets={s.availability_zone: s.subnet_id for s in notebook_subnets},
            catalog=catalog,
            launch_template_ids={
                **{slug: t.ref for slug, t in self.notebooks.launch_templates.items()},
                **{slug: lt for site in sites.values() for slug, lt in site.launch_template_ids.items()},
            },
            targets={name: site.settings for name, site in sites.items()},
            secret_prefix=config.secret_prefix,
            efs_id=self.storage.file_system.file_system_id,
            admin_users=[config.admin_user],
            lease_table=config.lease_table_name,
            idle_timeout_s=config.idle_timeout_s,
            allow_named_servers=config.allow_named_servers,
            named_server_limit_per_user=config.named_server_limit_per_user,
            extra_config=extra_config_files(config.extra_config_dir),
            spend_table=self.hub.spend_table.table_name,
            group_budgets_usd=config.group_budgets_usd,
            budget_exempt_admins=config.budget_exempt_admins,
            auth=auth,
            hub_dns_zone_id=self.dns.zone.hosted_zone_id,
            hub_dns_name=self.dns.record_name,
        )
        self.settings = SettingsParameter(
            self,
            "Settings",
            parameter_name=config.settings_parameter_name,
            document=document,
        )
        # The hub reads the settings at boot: create the parameter before the group's first host.
        self.hub.group.node.add_dependency(self.settings)

        # --- outputs ---------------------------------------------------------------------------
        CfnOutput(
            self,
            "HubUrl",
            value=hub_url,
            description="Open this in a browser",
        )
        CfnOutput(
            self,
            "SettingsParameterName",
            value=self.settings.parameter.parameter_name,
            description="SSM parameter with the hub settings JSON",
        )
        # What a target stack trusts and opens its notebook port to (infra/target_stack.py).
        CfnOutput(self, "HubRoleArn", value=self.hub.role.role_arn,
                  description="The hub's role: -c hub_role_arn=... of a target stack")
        CfnOutput(self, "HubVpcCidr", value=vpc.vpc_cidr_block,
                  description="The hub's VPC range: -c hub_cidr=... of a target stack")
        CfnOutput(
            self,
            "LoadBalancerDnsName",
            value=self.hub.load_balancer.load_balancer_dns_name,
            description="Point domain_name here (CNAME or alias record)",
        )
        if self.admin is not None:
            CfnOutput(
                self,
                "AdminPasswordSecretName",
                value=self.admin.secret_name,
                description="Secrets Manager secret with the admin's initial password",
            )
            CfnOutput(
                self,
                "AdminPasswordCommand",
                value=(
                    "aws secretsmanager get-secret-value --query SecretString --output text "
                    f"--region {self.region} --secret-id {self.admin.secret_name}"
                ),
                description=f"Prints the initial password of the admin {config.admin_user}: "
                "sign in with it, then change it at /hub/change-password",
            )
        if self.identity is not None:
            self._identity_outputs(config, callback_url(hub_url))
        CfnOutput(
            self,
            "DeleteHubRecordCommand",
            value=delete_record_command(zone_id=self.dns.zone.hosted_zone_id, record_name=self.dns.record_name,
                                        region=self.region),
            description="Run before cdk destroy: deletes the hub API's DNS record, which the hub host "
            "made (a hosted zone holding a record cannot be deleted)",
        )
        CfnOutput(
            self,
            "DatabaseEndpoint",
            value=self.state.database.db_instance_endpoint_address,
            description=f"The hub database's address (PostgreSQL on port {DATABASE_PORT}, hub host only)",
        )
        for key, name, what in (
            ("DatabaseSecretName", self.state.database_secret_name, "the hub database's credentials"),
            ("CookieSecretName", self.state.cookie_secret_name, "JupyterHub's cookie secret"),
            ("ProxyTokenSecretName", self.state.proxy_token_name, "the proxy's API token"),
        ):
            CfnOutput(self, key, value=name, description=f"Secrets Manager secret with {what}")
        if not config.https:
            Annotations.of(self.hub.load_balancer).add_warning_v2(
                "ec2hub:plain-http",
                "allow_http is set and no certificate_arn given: the hub is served over plain "
                "HTTP, so passwords and tokens cross the network unencrypted. Set "
                "tls.certificate_arn (and tls.domain) in ec2hub.yaml for HTTPS.",
            )

    def _identity_outputs(self, config: HubConfig, callback: str) -> None:
        """How the operator finishes an identity provider's setup (docs/DEPLOY.md)."""
        identity = self.identity
        CfnOutput(
            self,
            "OAuthCallbackUrl",
            value=callback,
            description="Register this as the redirect (callback) URL of the hub's OAuth app",
        )
        CfnOutput(
            self,
            "OAuthClientSecretName",
            value=identity.secret_name,
            description="Secrets Manager secret for the OAuth client secret (plain text)",
        )
        put = (
            f"aws secretsmanager put-secret-value --region {self.region} "
            f"--secret-id {identity.secret_name} --secret-string"
        )
        if identity.client is not None:
            CfnOutput(
                self,
                "OAuthClientSecretCommand",
                value=(
                    f'{put} "$(aws cognito-idp describe-user-pool-client --region {self.region} '
                    f"--user-pool-id {identity.user_pool.user_pool_id} --client-id "
                    f"{identity.client.user_pool_client_id} --query UserPoolClient.ClientSecret "
                    '--output text)"'
                ),
                description="Copies the Cognito app client's secret into the hub's secret (run once "
                "after the first deploy; the hub starts once it is there)",
            )
            CfnOutput(
                self,
                "CognitoUserPoolId",
                value=identity.user_pool.user_pool_id,
                description="Add users with aws cognito-idp admin-create-user, groups with "
                "admin-add-user-to-group",
            )
            CfnOutput(
                self,
                "CognitoSignInUrl",
                value=identity.domain.base_url(),
                description="The user pool's hosted sign-in domain",
            )
        else:
            CfnOutput(
                self,
                "OAuthClientSecretCommand",
                value=f"{put} '<the client secret of {config.auth} OAuth app {config.oauth_client_id}>'",
                description="Puts the provider's client secret where the hub reads it (the hub "
                "starts once it is there)",
            )
        if identity.google_key_secret_name:
            CfnOutput(
                self,
                "GoogleServiceAccountKeyCommand",
                value=(
                    f"aws secretsmanager put-secret-value --region {self.region} --secret-id "
                    f"{identity.google_key_secret_name} --secret-string file://<the service account's JSON key>"
                ),
                description="Puts the key of the Google service account that reads Workspace groups "
                "(domain-wide delegation, scope admin.directory.group.readonly) where the hub reads it",
            )
