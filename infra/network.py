"""The VPC: public subnets for the load balancer only, private subnets for the hub and notebooks.

Flow logs go to a KMS-encrypted CloudWatch log group. Optional VPC endpoints keep the hub's and the
notebooks' AWS API traffic (EC2, SSM, Session Manager, S3) off the NAT gateways.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

PUBLIC_SUBNETS = "public"
PRIVATE_SUBNETS = "private"

# Interface endpoints for what the hub (EC2, SSM) and Session Manager on every instance call.
INTERFACE_ENDPOINTS = {
    "Ec2": ec2.InterfaceVpcEndpointAwsService.EC2,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    # The CloudWatch agent on the hub and the notebooks (infra/observability.py).
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
}


class Network(Construct):
    """VPC over two AZs, flow logs, and (optionally) endpoints for the AWS APIs the platform uses."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        nat_gateways: int,
        vpc_endpoints: bool,
        cidr: str | None = None,
    ) -> None:
        """``cidr``: the VPC's range (None: CDK's 10.0.0.0/16). A target's VPC needs one of its
        own: a peering connection refuses overlapping ranges."""
        super().__init__(scope, construct_id)
        region = Stack.of(self).region

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            ip_addresses=ec2.IpAddresses.cidr(cidr) if cidr else None,
            nat_gateways=nat_gateways,
            subnet_configuration=[
                # Only the internet-facing load balancer lives here.
                ec2.SubnetConfiguration(
                    name=PUBLIC_SUBNETS, subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
                # Hub and notebooks; /20 leaves room for about 4,000 notebooks per AZ.
                ec2.SubnetConfiguration(
                    name=PRIVATE_SUBNETS,
                    subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS,
                    cidr_mask=20,
                ),
            ],
        )

        # CloudWatch Logs encrypts with a customer key only if the key policy lets the regional
        # logs service use it for this account's log groups (CloudWatch Logs user guide,
        # "Encrypt log data in CloudWatch Logs using AWS KMS").
        self.log_key = kms.Key(
            self,
            "LogKey",
            description="ec2hub: encrypts the log groups (VPC flow log, hub and notebook logs)",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.log_key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal(f"logs.{region}.amazonaws.com")],
                actions=[
                    "kms:Encrypt*",
                    "kms:Decrypt*",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:Describe*",
                ],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": Stack.of(self).format_arn(
                            service="logs",
                            resource="log-group",
                            resource_name="*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    }
                },
            )
        )
        self.flow_log_group = logs.LogGroup(
            self,
            "FlowLogGroup",
            encryption_key=self.log_key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.flow_log = self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(self.flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.ALL,
            max_aggregation_interval=ec2.FlowLogMaxAggregationInterval.TEN_MINUTES,
        )

        self.endpoints: dict[str, ec2.IVpcEndpoint] = {}
        # Interface endpoints get one security group with no ingress of its own: the Stack opens
        # 443 to exactly the groups that call AWS (hub, notebooks), not to the whole VPC CIDR.
        self.endpoint_security_group: ec2.SecurityGroup | None = None
        if vpc_endpoints:
            self.endpoint_security_group = ec2.SecurityGroup(
                self,
                "EndpointSecurityGroup",
                vpc=self.vpc,
                description="ec2hub interface VPC endpoints: HTTPS from the hub and notebooks",
                allow_all_outbound=False,
            )
            self.endpoints["S3"] = self.vpc.add_gateway_endpoint(
                "S3Endpoint",
                service=ec2.GatewayVpcEndpointAwsService.S3,
                subnets=[self.private_subnets],
            )
            for name, service in INTERFACE_ENDPOINTS.items():
                self.endpoints[name] = self.vpc.add_interface_endpoint(
                    f"{name}Endpoint",
                    service=service,
                    subnets=self.private_subnets,
                    private_dns_enabled=True,
                    security_groups=[self.endpoint_security_group],
                    open=False,
                )

    @property
    def private_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_group_name=PRIVATE_SUBNETS)

    @property
    def public_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_group_name=PUBLIC_SUBNETS)
