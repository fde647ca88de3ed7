"""Users' home directories: one encrypted EFS file system, mounted by every notebook at /mnt/efs.

Who may reach it (NFS from the notebook and hub security groups) and who may mount it (the file
system policy, :func:`file_system_statements`) are wired in the Stack.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_efs as efs
from aws_cdk import aws_iam as iam
from constructs import Construct

CLIENT_MOUNT = "elasticfilesystem:ClientMount"
CLIENT_WRITE = "elasticfilesystem:ClientWrite"
CLIENT_ROOT_ACCESS = "elasticfilesystem:ClientRootAccess"


def file_system_statements(*, notebook_role: iam.IRole) -> list[iam.PolicyStatement]:
    """The file system policy: TLS always, IAM always, only the notebook role, only via a mount target.

    With a file system policy in place EFS allows a client only what the policy (or the client's
    identity policy) allows (EFS user guide, "Using IAM to control file system data access"), so
    an anonymous client, one that mounts without the mount helper's ``iam`` option, gets nothing:
    no statement allows ``*``. Over plain NFS (no ``tls``) everything is denied. The hub role gets
    nothing: the hub never mounts the homes.

    The notebook role keeps ``ClientRootAccess`` because the notebook bootstrap mounts the file
    system's root at /mnt/efs as root, creates ``home/<unix-name>`` owned by the user and binds it
    at the user's home. That means root on any notebook instance can read every home. The
    stronger design is one access point per user (uid/gid and root directory enforced by EFS),
    created by the spawner, named to the instance in a tag, and mounted by the bootstrap with
    ``accesspoint=``; then no role needs root on the tree. It needs the spawner, the notebook
    bootstrap and the sandbox's EFS stand-in to change together, so it is not done yet.

    What IAM cannot express even then: binding one instance to one user's access point. EFS
    identifies an NFS client by its IAM role (EFS user guide, "Using access points in IAM
    policies"), and every notebook shares the notebook role; ``elasticfilesystem:AccessPointArn``
    can only be compared with fixed ARNs, and access point ids are generated, so no policy
    variable of the instance can name its own.
    """
    return [
        iam.PolicyStatement(
            sid="DenyWithoutTls",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=["*"],
            conditions={"Bool": {"aws:SecureTransport": "false"}},
        ),
        iam.PolicyStatement(
            sid="NotebooksThroughMountTargets",
            principals=[iam.ArnPrincipal(notebook_role.role_arn)],
            # Root: the bootstrap makes and chowns each user's home (see above).
            actions=[CLIENT_MOUNT, CLIENT_WRITE, CLIENT_ROOT_ACCESS],
            conditions={"Bool": {"elasticfilesystem:AccessedViaMountTarget": "true"}},
        ),
    ]


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
