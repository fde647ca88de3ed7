"""Users' home directories: one encrypted EFS file system, mounted by every notebook at /mnt/efs.

Who may reach it (NFS from the notebook and hub security groups) is wired in the Stack.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_efs as efs
from constructs import Construct


class Storage(Construct):
    """EFS for home directories: encrypted at rest, backed up, kept when the stack is deleted."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
    ) -> None:
        super().__init__(scope, construct_id)
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="ec2hub home directories (EFS): NFS from the hub and notebooks only",
            allow_all_outbound=False,
        )
        self.file_system = efs.FileSystem(
            self,
            "Homes",
            vpc=vpc,
            vpc_subnets=subnets,
            security_group=self.security_group,
            encrypted=True,
            # AWS Backup daily plan with 35-day retention (EFS "automatic backups").
            enable_automatic_backups=True,
            performance_mode=efs.PerformanceMode.GENERAL_PURPOSE,
            # Elastic: pay for what notebooks read and write; bursty use needs no provisioning.
            throughput_mode=efs.ThroughputMode.ELASTIC,
            # Files untouched for 30 days move to Infrequent Access and come back on first read.
            lifecycle_policy=efs.LifecyclePolicy.AFTER_30_DAYS,
            out_of_infrequent_access_policy=efs.OutOfInfrequentAccessPolicy.AFTER_1_ACCESS,
            # Users' work outlives any one deployment of the stack.
            removal_policy=RemovalPolicy.RETAIN,
        )
