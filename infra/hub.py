"""The hub host behind an internet-facing load balancer, and what its role may do.

The hub Instance runs JupyterHub, the proxy and the EC2Spawner (its user data: infra/userdata.py).
It learns its inputs from its own tags through IMDSv2 (ARCHITECTURE.md §5): which SSM parameter holds
the settings, where the spawner package is (an S3 asset of ``spawner/``), and the first admin.

:func:`spawner_statements` is the hub role's whole EC2/SSM/IAM policy, built from the stack's
resources; the Stack attaches it (grants live in the Stack).
"""

from __future__ import annotations

from aws_cdk import (
    Annotations,
    CfnAutoScalingReplacingUpdate,
    CfnAutoScalingScheduledAction,
    CfnCreationPolicy,
    CfnResourceAutoScalingCreationPolicy,
    CfnResourceSignal,
    CfnTag,
    CfnUpdatePolicy,
    Duration,
    RemovalPolicy,
    Stack,
)
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct
from ec2spawner.hubconfig import HEALTH_PATH, LOAD_BALANCER_IDLE_TIMEOUT_S
from ec2spawner.payloads import LEASE_KEY, TAG_CLASS, TAG_HUB
from ec2spawner.spend import SPEND_KEY, SPEND_SORT

from .config import REPO_ROOT
from .session import session_manager_statement
from .userdata import assemble_user_data

SPAWNER_PACKAGE = REPO_ROOT / "spawner"
PROXY_PORT = 8000  # configurable-http-proxy's public port: the ALB target
HUB_API_PORT = 8081  # notebooks register back to the hub API here
# 200 only from the hub process that holds the hub lease (ec2spawner.lease): a hub standing by
# during a replacement gets no traffic.
HEALTH_CHECK_PATH = "/hub" + HEALTH_PATH

# Tags the hub bootstrap reads through IMDS (ARCHITECTURE.md §5); the hub tag and the class tag
# are the spawner's (ec2spawner.payloads), which the IAM conditions below must match.
TAG_SETTINGS_PARAMETER = "ec2hub:settings-parameter"
TAG_SPAWNER_ASSET = "ec2hub:spawner-asset"
TAG_ADMIN_USER = "ec2hub:admin-user"
# "<stack name>/<logical id of the hub's Auto Scaling group>": what the hub's first boot signals
# (cloudformation:SignalResource) once its hub answers.
TAG_CFN_SIGNAL = "ec2hub:cfn-signal"

# The group's replacement of a hub waits this long for the new hub's signal, and the load
# balancer's health check first counts this long after a launch: a first boot installs Node, the
# proxy and the venv (minutes), then the new hub stands by until the old one has given up the
# lease (the old group is deleted after the signal; its hub releases the lease as it stops).
HUB_SIGNAL_TIMEOUT_S = 20 * 60
HUB_HEALTH_CHECK_GRACE_S = 15 * 60


# Where AWS publishes the newest Amazon Linux 2023 AMI id (the hub's default image).
AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def hub_image(region: str, hub_ami: str | None, baked_parameter: str | None = None) -> ec2.IMachineImage:
    """The hub's AMI, changed only when the admin says so.

    ``baked_parameter`` (``hub.baked_image``): the SSM parameter the hub image's pipeline writes
    (infra.images); EC2 resolves it at each launch (``resolve:ssm:``), so a replaced hub gets the
    newest baked image. Otherwise:

    ``hub_ami`` (context) pins an AMI id. Without it, the newest AL2023 AMI is looked up once, at
    the first synth with credentials, and cached in ``cdk.context.json`` (commit it): later
    deploys keep that image even after AWS publishes a newer one, where the old
    ``latest_amazon_linux2023()`` resolved the parameter at every deploy and so replaced the hub.
    """
    if baked_parameter:
        return ec2.MachineImage.resolve_ssm_parameter_at_launch(baked_parameter)
    if hub_ami:
        return ec2.MachineImage.generic_linux({region: hub_ami})
    return ec2.MachineImage.from_ssm_parameter(AL2023_PARAMETER, cached_in_context=True)


class Hub(Construct):
    """The hub host's Auto Scaling group of one and its launch template, its security group and
    role, the spawner asset, the lease and spend tables, the ALB and its log bucket."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        hub_subnets: ec2.SubnetSelection,
        alb_subnets: ec2.SubnetSelection,
        hub_id: str,
        instance_type: str,
        hub_ami: str | None,
        lease_table_name: str,
        hub_image_parameter: str | None = None,
        settings_parameter_name: str,
        admin_user: str | None,
        certificate_arn: str | None,
        allowed_ingress_cidr: str,
        secret_tags: dict[str, str],
    ) -> None:
        super().__init__(scope, construct_id)

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="ec2hub hub host: proxy 8000 from the load balancer, hub API 8081 from notebooks",
            # The hub calls AWS APIs, reaches notebooks on 8888 and installs packages at first boot.
            allow_all_outbound=True,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="ec2hub hub host: launches and manages this hub's notebook instances",
        )
        self.role.add_to_policy(session_manager_statement())

        # The spawner package as a zip in the CDK asset bucket; the hub bootstrap pip-installs it.
        self.spawner_asset = s3_assets.Asset(
            self,
            "SpawnerPackage",
            path=str(SPAWNER_PACKAGE),
            exclude=[
                "*.egg-info",
                "__pycache__",
                "*.pyc",
                ".pytest_cache",
                "build",
                "dist",
            ],
        )

        # The hub lease: one item per hub id; only its holder changes EC2 (ec2spawner.lease).
        self.lease_table = dynamodb.Table(
            self,
            "LeaseTable",
            table_name=lease_table_name,
            partition_key=dynamodb.Attribute(name=LEASE_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # A lease is worth nothing once its hubs are gone: nothing to keep.
            removal_policy=RemovalPolicy.DESTROY,
        )

        # The spend ledger (ec2spawner.spend): per user and group per month, and each instance's
        # billing mark. Kept when the stack is deleted: it is the record of what was spent. Its
        # name is CloudFormation's, so a new stack of the same hub id starts a new ledger.
        self.spend_table = dynamodb.Table(
            self,
            "SpendTable",
            partition_key=dynamodb.Attribute(name=SPEND_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=SPEND_SORT, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=RemovalPolicy.RETAIN,
        )

        # --- the hub host: an Auto Scaling group of one, launched from this template -----------
        stack = Stack.of(self)
        self.instance_profile = iam.CfnInstanceProfile(self, "InstanceProfile", roles=[self.role.role_name])
        # The script's exact bytes (or their gzip, if over EC2's limit), base64 as EC2 takes them.
        user_data = assemble_user_data("hub")
        if user_data.notice:
            Annotations.of(self).add_warning_v2(
                "ec2hub:user-data-compressed", user_data.notice
            )
        host = {
            "image_id": hub_image(stack.region, hub_ami, hub_image_parameter).get_image(self).image_id,
            "instance_type": instance_type,
            "instance_profile_arn": self.instance_profile.attr_arn,
            "security_group_id": self.security_group.security_group_id,
            "user_data": user_data.base64,
        }
        self.group = autoscaling.CfnAutoScalingGroup(
            self,
            "Group",
            min_size="1",
            max_size="1",
            desired_capacity="1",
            vpc_zone_identifier=vpc.select_subnets(
                subnet_group_name=hub_subnets.subnet_group_name, subnet_type=hub_subnets.subnet_type
            ).subnet_ids,
            # The load balancer's health check (the lease holder's 200) decides, after the grace.
            health_check_type="ELB",
            health_check_grace_period=HUB_HEALTH_CHECK_GRACE_S,
        )
        # Created (and, on a replacing update, the new group accepted) only once its hub answers:
        # the hub's first boot sends the signal (bootstrap/ec2hub_bootstrap/hub.py, ``signal``).
        self.group.cfn_options.creation_policy = CfnCreationPolicy(
            resource_signal=CfnResourceSignal(count=1, timeout=f"PT{HUB_SIGNAL_TIMEOUT_S // 60}M"),
            auto_scaling_creation_policy=CfnResourceAutoScalingCreationPolicy(min_successful_instances_percent=100),
        )
        # A changed launch template makes a new group beside the old one; CloudFormation deletes the
        # old group (and its hub) only after the new group's hub signalled, in the update's cleanup.
        self.group.cfn_options.update_policy = CfnUpdatePolicy(
            auto_scaling_replacing_update=CfnAutoScalingReplacingUpdate(will_replace=True),
            auto_scaling_scheduled_action=CfnAutoScalingScheduledAction(
                ignore_unmodified_group_size_properties=True
            ),
        )
        # What the hub bootstrap reads through IMDS (ARCHITECTURE.md §5), with ``secret_tags``
        # (the names of its state secrets and the admin's password).
        self.host_tags = {
            TAG_HUB: hub_id,
            TAG_SETTINGS_PARAMETER: settings_parameter_name,
            TAG_SPAWNER_ASSET: self.spawner_asset.s3_object_url,
            **({TAG_ADMIN_USER: admin_user} if admin_user else {}),
            "Name": f"ec2hub-{hub_id}-hub",
            # Which resource the hub's first boot signals: this stack (named by the hub id) and
            # the group's logical id, as a literal (a Ref would make the template depend on the group).
            TAG_CFN_SIGNAL: f"{hub_id}/{stack.get_logical_id(self.group)}",
            **secret_tags,
        }
        self.launch_template = ec2.CfnLaunchTemplate(
            self,
            "LaunchTemplate",
            launch_template_data=hub_launch_template_data(**host, tags=self.host_tags),
        )
        self.group.launch_template = autoscaling.CfnAutoScalingGroup.LaunchTemplateSpecificationProperty(
            launch_template_id=self.launch_template.ref,
            version=self.launch_template.attr_latest_version_number,
        )

        # --- load balancer -------------------------------------------------------------------
        self.log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            # ALB access logs support only SSE-S3 (ELB user guide, "Access logs": bucket requirements).
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365))],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.alb_security_group = ec2.SecurityGroup(
            self,
            "LoadBalancerSecurityGroup",
            vpc=vpc,
            description="ec2hub load balancer: HTTP(S) from the allowed clients",
            allow_all_outbound=False,
        )
        peer = ec2.Peer.ipv4(allowed_ingress_cidr)
        self.load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=vpc,
            vpc_subnets=alb_subnets,
            internet_facing=True,
            security_group=self.alb_security_group,
            drop_invalid_header_fields=True,
            # Notebook websockets can sit idle between kernel messages; 60 s (the default) cuts them.
            # The proxy keeps connections open longer than this (ec2spawner.hubconfig).
            idle_timeout=Duration.seconds(LOAD_BALANCER_IDLE_TIMEOUT_S),
        )
        self.load_balancer.log_access_logs(self.log_bucket, prefix="alb")

        self.target_group = elbv2.ApplicationTargetGroup(
            self,
            "HubTargets",
            vpc=vpc,
            port=PROXY_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            # The group registers its instance (TargetGroupARNs below).
            target_type=elbv2.TargetType.INSTANCE,
            health_check=elbv2.HealthCheck(
                path=HEALTH_CHECK_PATH,
                healthy_http_codes="200",
                interval=Duration.seconds(30),
                timeout=Duration.seconds(10),
            ),
            deregistration_delay=Duration.seconds(30),
        )
        self.group.target_group_arns = [self.target_group.target_group_arn]
        if certificate_arn:
            self.load_balancer.add_listener(
                "Https",
                port=443,
                protocol=elbv2.ApplicationProtocol.HTTPS,
                certificates=[elbv2.ListenerCertificate.from_arn(certificate_arn)],
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
                open=False,
                default_target_groups=[self.target_group],
            )
            self.load_balancer.add_redirect(source_port=80, target_port=443, open=False)
            self.listener_ports = [443, 80]
        else:
            self.load_balancer.add_listener(
                "Http",
                port=80,
                protocol=elbv2.ApplicationProtocol.HTTP,
                open=False,
                default_target_groups=[self.target_group],
            )
            self.listener_ports = [80]
        for port in self.listener_ports:
            self.alb_security_group.add_ingress_rule(
                peer,
                ec2.Port.tcp(port),
                f"ec2hub clients on {port} ({'redirect' if port == 80 and certificate_arn else 'hub'})",
            )


def hub_launch_template_data(
    *,
    image_id: str,
    instance_type: str,
    instance_profile_arn: str,
    security_group_id: str,
    user_data: str,
    tags: dict[str, str],
) -> ec2.CfnLaunchTemplate.LaunchTemplateDataProperty:
    """The hub host as the group launches it: IMDSv2 only (hop limit 1, tags in the metadata, which
    the bootstrap reads), an encrypted gp3 root volume, no public address (the hub subnets are
    private), detailed monitoring, the hub role's profile, ``tags`` on the instance and its volume.
    Typed properties, not an override: cdk-nag reads them."""
    lt = ec2.CfnLaunchTemplate
    return lt.LaunchTemplateDataProperty(
        image_id=image_id,
        instance_type=instance_type,
        iam_instance_profile=lt.IamInstanceProfileProperty(arn=instance_profile_arn),
        security_group_ids=[security_group_id],
        block_device_mappings=[
            lt.BlockDeviceMappingProperty(
                device_name="/dev/xvda",
                ebs=lt.EbsProperty(volume_size=30, volume_type="gp3", encrypted=True, delete_on_termination=True),
            )
        ],
        metadata_options=lt.MetadataOptionsProperty(
            http_endpoint="enabled",
            http_tokens="required",
            http_put_response_hop_limit=1,
            instance_metadata_tags="enabled",
        ),
        monitoring=lt.MonitoringProperty(enabled=True),
        user_data=user_data,
        tag_specifications=[
            lt.TagSpecificationProperty(
                resource_type=kind, tags=[CfnTag(key=key, value=value) for key, value in tags.items()]
            )
            for kind in ("instance", "volume")
        ],
    )


def spawner_statements(
    *,
    scope: Construct,
    hub_id: str,
    launch_template_arns: list[str],
    notebook_subnet_ids: list[str],
    notebook_role: iam.IRole,
    notebook_instance_profile_arn: str,
    instance_types: list[str],
    ssm_prefix: str,
    secret_prefix: str,
    spawner_asset: s3_assets.Asset,
) -> list[iam.PolicyStatement]:
    """Least privilege for the EC2Spawner on the hub (docs/ARCHITECTURE.md, Security model): what
    it does with notebooks (:func:`launch_statements`), then its own parameters and package."""
    stack = Stack.of(scope)

    def ssm_arn(path: str) -> str:
        return stack.format_arn(
            service="ssm", resource="parameter", resource_name=path.lstrip("/")
        )

    return [
        *launch_statements(
            scope=scope,
            hub_id=hub_id,
            launch_template_arns=launch_template_arns,
            notebook_subnet_ids=notebook_subnet_ids,
            notebook_role=notebook_role,
            notebook_instance_profile_arn=notebook_instance_profile_arn,
            instance_types=instance_types,
            secret_prefix=secret_prefix,
        ),
        iam.PolicyStatement(
            sid="ReadHubParameters",
            actions=[
                "ssm:GetParameter",
                "ssm:GetParameters",
                "ssm:GetParametersByPath",
            ],
            resources=[ssm_arn(ssm_prefix + "*")],
        ),
        iam.PolicyStatement(
            sid="SecureStringsViaSsm",
            actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
            resources=[
                stack.format_arn(service="kms", resource="key", resource_name="*")
            ],
            conditions={
                "StringEquals": {"kms:ViaService": f"ssm.{stack.region}.amazonaws.com"},
                "StringLike": {
                    "kms:EncryptionContext:PARAMETER_ARN": ssm_arn(ssm_prefix + "*")
                },
            },
        ),
        iam.PolicyStatement(
            sid="ReadSpawnerPackage",
            actions=["s3:GetObject"],
            resources=[
                spawner_asset.bucket.arn_for_objects(spawner_asset.s3_object_key)
            ],
        ),
    ]


def launch_statements(
    *,
    scope: Construct,
    hub_id: str,
    launch_template_arns: list[str],
    notebook_subnet_ids: list[str],
    notebook_role: iam.IRole,
    notebook_instance_profile_arn: str,
    instance_types: list[str],
    secret_prefix: str,
) -> list[iam.PolicyStatement]:
    """What the spawner does with notebooks in one account and region: the hub role's in its own,
    the assumed role's in a target's (infra/target_stack.py), with the same conditions.

    RunInstances authorizes every resource a launch touches, the launch template included (EC2
    user guide, "Use launch templates to control launching instances"). The launch-template
    resource is allowed only for this stack's templates, by exact ARN; every other resource is
    allowed only when ``ec2:LaunchTemplate`` names a template (a launch without one is refused),
    which therefore must be one of ours. The exact list appears once, so the policy stays well
    under IAM's 10,240-character inline limit however many classes there are. Resources the
    template supplies (image, security groups, the root volume) must come from it
    (``ec2:IsLaunchTemplateResource``); the spawner overrides only the subnet (one of the notebook
    subnets), the instance type (a capacity fallback: one of ``instance_types``, the catalog's) and
    tags. The instance must also be what every template makes it: IMDSv2 only with hop limit 1,
    the notebook instance profile, encrypted volumes. These keys are evaluated on the launch as
    EC2 resolves it, template values included (Service Authorization Reference, Amazon EC2,
    RunInstances: ``instance`` and ``volume`` condition keys).

    What IAM cannot express: RunInstances has no condition key for the user data, so a request
    that overrides ``UserData`` cannot be refused here; nor for the template version, so a caller
    could name an older version of one of our templates (CloudFormation keeps versions; every one
    of them is ours and satisfies the conditions above). The spawner sends neither.

    ``ssm:*`` on the secrets needs no KMS statement of its own in the hub's account (the hub's
    parameters' statement covers the secret prefix below it); a target's role adds one.
    """
    stack = Stack.of(scope)

    def ec2_arn(resource: str, name: str, account: bool = True) -> str:
        return stack.format_arn(
            service="ec2",
            resource=resource,
            resource_name=name,
            account=None if account else "",
        )

    def ssm_arn(path: str) -> str:
        return stack.format_arn(
            service="ssm", resource="parameter", resource_name=path.lstrip("/")
        )

    from_own_template = {
        "ArnLike": {"ec2:LaunchTemplate": ec2_arn("launch-template", "*")}
    }
    created_by_launch = [
        ec2_arn("instance", "*"),
        ec2_arn("volume", "*"),
        ec2_arn("spot-instances-request", "*"),
    ]
    return [
        iam.PolicyStatement(
            sid="UseOwnLaunchTemplates",
            actions=["ec2:RunInstances"],
            resources=list(launch_template_arns),
        ),
        iam.PolicyStatement(
            sid="RunInstancesAsTemplated",
            actions=["ec2:RunInstances"],
            resources=[ec2_arn("instance", "*")],
            conditions={
                **from_own_template,
                "StringEquals": {
                    "ec2:InstanceType": sorted(set(instance_types)),
                    "ec2:MetadataHttpTokens": "required",
                },
                "ArnEquals": {"ec2:InstanceProfile": notebook_instance_profile_arn},
                "NumericLessThanEquals": {"ec2:MetadataHttpPutResponseHopLimit": "1"},
            },
        ),
        iam.PolicyStatement(
            sid="RunInstancesEncryptedTemplateVolumes",
            actions=["ec2:RunInstances"],
            resources=[ec2_arn("volume", "*")],
            # A BlockDeviceMappings override makes a volume that is not the template's.
            conditions={
                **from_own_template,
                "Bool": {
                    "ec2:Encrypted": "true",
                    "ec2:IsLaunchTemplateResource": "true",
                },
            },
        ),
        iam.PolicyStatement(
            sid="RunInstancesSpotRequests",
            actions=["ec2:RunInstances"],
            # A spot request has no condition key of its own beyond the template.
            resources=[ec2_arn("spot-instances-request", "*")],
            conditions=from_own_template,
        ),
        iam.PolicyStatement(
            sid="RunInstancesNoPublicAddress",
            actions=["ec2:RunInstances"],
            resources=[ec2_arn("network-interface", "*")],
            conditions={
                **from_own_template,
                "BoolIfExists": {"ec2:AssociatePublicIpAddress": "false"},
            },
        ),
        iam.PolicyStatement(
            sid="RunInstancesImageAndGroupsFromTemplate",
            actions=["ec2:RunInstances"],
            resources=[
                ec2_arn("image", "*", account=False),
                ec2_arn("security-group", "*"),
            ],
            conditions={
                **from_own_template,
                "Bool": {"ec2:IsLaunchTemplateResource": "true"},
            },
        ),
        iam.PolicyStatement(
            sid="RunInstancesInNotebookSubnets",
            actions=["ec2:RunInstances"],
            resources=[
                ec2_arn("subnet", subnet_id) for subnet_id in notebook_subnet_ids
            ],
            conditions=from_own_template,
        ),
        iam.PolicyStatement(
            sid="TagOnlyAtLaunch",
            actions=["ec2:CreateTags"],
            resources=[*created_by_launch, ec2_arn("network-interface", "*")],
            conditions={
                "StringEquals": {
                    "ec2:CreateAction": "RunInstances",
                    f"aws:RequestTag/{TAG_HUB}": hub_id,
                }
            },
        ),
        iam.PolicyStatement(
            sid="ManageOwnNotebooks",
            actions=[
                # The console tail shown to a user whose server failed its health probes.
                "ec2:GetConsoleOutput",
                "ec2:StartInstances",
                "ec2:StopInstances",
                "ec2:TerminateInstances",
            ],
            resources=[ec2_arn("instance", "*")],
            conditions={
                "StringEquals": {f"aws:ResourceTag/{TAG_HUB}": hub_id},
                # Notebooks carry a class tag; the hub instance (same hub tag) does not.
                "Null": {f"aws:ResourceTag/{TAG_CLASS}": "false"},
            },
        ),
        iam.PolicyStatement(
            sid="DescribeEc2",
            # EC2 Describe* actions support no resource-level permissions (Resource must be *).
            actions=[
                "ec2:DescribeAvailabilityZones",
                "ec2:DescribeInstances",
                "ec2:DescribeInstanceStatus",
                "ec2:DescribeInstanceTypeOfferings",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:DescribeSpotInstanceRequests",
                "ec2:DescribeSubnets",
                "ec2:DescribeTags",
            ],
            resources=["*"],
        ),
        iam.PolicyStatement(
            sid="PassNotebookRoleToEc2",
            actions=["iam:PassRole"],
            resources=[notebook_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        ),
        iam.PolicyStatement(
            sid="WriteServerSecrets",
            actions=[
                "ssm:AddTagsToResource",
                "ssm:DeleteParameter",
                "ssm:DeleteParameters",
                "ssm:GetParameter",
                "ssm:PutParameter",
            ],
            resources=[ssm_arn(secret_prefix + "*")],
        ),
        iam.PolicyStatement(
            sid="ListServerSecrets",
            # The orphan sweeper lists secrets by name prefix; DescribeParameters supports no
            # resource-level permissions (Resource must be *) and returns metadata, never values.
            actions=["ssm:DescribeParameters"],
            resources=["*"],
        ),
    ]


def spend_statements(*, spend_table_arn: str) -> list[iam.PolicyStatement]:
    """What the spend ledger and the price book need (ec2spawner.spend).

    The ledger's accruals are TransactWriteItems of UpdateItems; IAM authorizes a transaction by
    the actions inside it (DynamoDB developer guide, "Using IAM with DynamoDB transactions"), so
    UpdateItem on the one table is all it takes. The Price List's ``pricing:GetProducts`` and
    EC2's ``ec2:DescribeSpotPriceHistory`` support no resource-level permissions (Service
    Authorization Reference: AWS Price List, Amazon EC2): Resource must be ``*``; both return
    public prices only.
    """
    return [
        iam.PolicyStatement(
            sid="RecordSpend",
            actions=["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:UpdateItem"],
            resources=[spend_table_arn],
        ),
        iam.PolicyStatement(
            sid="ReadPrices",
            actions=["ec2:DescribeSpotPriceHistory", "pricing:GetProducts"],
            resources=["*"],
        ),
    ]
