"""The one ec2hub Stack: builds each concern's construct and does all the wiring between them.

Security-group rules, IAM grants and the settings document live here, where every resource they
connect is in view.
"""

from __future__ import annotations

from aws_cdk import Annotations, ArnFormat, CfnOutput, Environment, Stack, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct
from ec2spawner.catalog import Catalog

from .admin import TAG_ADMIN_PASSWORD_SECRET, AdminAccount
from .config import HubConfig
from .hub import HUB_API_PORT, PROXY_PORT, Hub, spawner_statements
from .images import ClassImages, image_parameter_name, launch_image
from .network import PRIVATE_SUBNETS, Network
from .notebooks import NOTEBOOK_PORT, Notebooks
from .settings import SettingsParameter, settings_document
from .storage import Storage, file_system_statements


class Ec2HubStack(Stack):
    """JupyterHub with one EC2 instance per notebook server, for one hub id (= stack name)."""

    def __init__(
        self, scope: Construct, *, config: HubConfig, catalog: Catalog
    ) -> None:
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
        self.hub = Hub(
            self,
            "Hub",
            vpc=vpc,
            hub_subnets=private,
            alb_subnets=self.network.public_subnets,
            hub_id=config.hub_id,
            instance_type=config.hub_instance_type,
            hub_ami=config.hub_ami,
            lease_table_name=config.lease_table_name,
            settings_parameter_name=config.settings_parameter_name,
            admin_user=config.admin_user,
            certificate_arn=config.certificate_arn,
            allowed_ingress_cidr=config.allowed_ingress_cidr,
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
        )
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

        # --- who may mount the homes -----------------------------------------------------------
        for statement in file_system_statements(notebook_role=self.notebooks.role):
            self.storage.file_system.add_to_resource_policy(statement)

        # --- the hub role ----------------------------------------------------------------------
        notebook_subnets = vpc.select_subnets(subnet_group_name=PRIVATE_SUBNETS).subnets
        for statement in spawner_statements(
            scope=self,
            hub_id=config.hub_id,
            launch_template_arns=self.notebooks.launch_template_arns,
            notebook_subnet_ids=[s.subnet_id for s in notebook_subnets],
            notebook_role=self.notebooks.role,
            notebook_instance_profile_arn=self.notebooks.instance_profile.instance_profile_arn,
            instance_types=[t for cls in catalog.classes for t in cls.instance_types],
            ssm_prefix=config.ssm_prefix,
            secret_prefix=config.secret_prefix,
            spawner_asset=self.hub.spawner_asset,
        ):
            self.hub.role.add_to_principal_policy(statement)

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

        # --- the first admin: a generated password only the hub may read ------------------------
        self.admin = AdminAccount(
            self, "Admin", hub_id=config.hub_id, admin_user=config.admin_user
        )
        self.hub.role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadAdminPassword",
                actions=["secretsmanager:GetSecretValue"],
                # Secrets Manager appends a hyphen and 6 random characters to a secret's name in
                # its ARN (Secrets Manager user guide, "Secret ARN"): '??????' matches exactly those.
                resources=[
                    self.format_arn(
                        service="secretsmanager",
                        resource="secret",
                        resource_name=f"{self.admin.secret_name}-??????",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        Tags.of(self.hub.instance).add(
            TAG_ADMIN_PASSWORD_SECRET, self.admin.secret_name
        )

        # --- settings --------------------------------------------------------------------------
        document = settings_document(
            region=self.region,
            hub_id=config.hub_id,
            subnets={s.availability_zone: s.subnet_id for s in notebook_subnets},
            catalog=catalog,
            launch_template_ids={
                slug: t.ref for slug, t in self.notebooks.launch_templates.items()
            },
            secret_prefix=config.secret_prefix,
            efs_id=self.storage.file_system.file_system_id,
            admin_users=[config.admin_user],
            lease_table=config.lease_table_name,
        )
        self.settings = SettingsParameter(
            self,
            "Settings",
            parameter_name=config.settings_parameter_name,
            document=document,
        )
        # The hub reads the settings at boot: create the parameter before the instance.
        self.hub.instance.node.add_dependency(self.settings)

        # --- outputs ---------------------------------------------------------------------------
        scheme = "https" if config.https else "http"
        host = config.domain_name or self.hub.load_balancer.load_balancer_dns_name
        CfnOutput(
            self,
            "HubUrl",
            value=f"{scheme}://{host}/",
            description="Open this in a browser",
        )
        CfnOutput(
            self,
            "SettingsParameterName",
            value=self.settings.parameter.parameter_name,
            description="SSM parameter with the hub settings JSON",
        )
        CfnOutput(
            self,
            "LoadBalancerDnsName",
            value=self.hub.load_balancer.load_balancer_dns_name,
            description="Point domain_name here (CNAME or alias record)",
        )
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
        if not config.https:
            Annotations.of(self.hub.load_balancer).add_warning_v2(
                "ec2hub:plain-http",
                "allow_http is set and no certificate_arn given: the hub is served over plain "
                "HTTP, so passwords and tokens cross the network unencrypted. Pass "
                "-c certificate_arn=arn:aws:acm:... (and -c domain_name=...) for HTTPS.",
            )
