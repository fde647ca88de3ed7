"""Users' home directories: one encrypted EFS file system; each notebook mounts its user's home
through that user's access point.

Who may reach it (NFS from the notebook and hub security groups) and who may mount it (the file
system policy, :func:`file_system_statements`) are wired in the Stack.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_efs as efs
from aws_cdk import aws_iam as iam
from constructs import Construct
from ec2spawner.payloads import TAG_HUB, TAG_UNIX_USER

CLIENT_MOUNT = "elasticfilesystem:ClientMount"
CLIENT_WRITE = "elasticfilesystem:ClientWrite"
CLIENT_ROOT_ACCESS = "elasticfilesystem:ClientRootAccess"
ACCESS_POINT_ARN = "elasticfilesystem:AccessPointArn"


def file_system_statements(*, notebook_role: iam.IRole) -> list[iam.PolicyStatement]:
    """The file system policy: TLS always, IAM always, the notebook role only through an access point.

    With a file system policy in place EFS allows a client only what the policy (or the client's
    identity policy) allows (EFS user guide, "Using IAM to control file system data access"), so
    an anonymous client, one that mounts without the mount helper's ``iam`` option, gets nothing:
    no statement allows ``*``. Over plain NFS (no ``tls``) everything is denied.

    Each notebook mounts only its user's home, through that user's access point (made by the
    spawner: ``ec2spawner.payloads.access_point_params``), which EFS confines to ``/home/<unix
    name>`` and runs as the user's uid whoever the client claims to be. The notebook role may mount
    and write only through a mount target and only through an access point; the explicit Deny
    also outweighs any identity policy that would allow more. Nobody gets ``ClientRootAccess``:
    EFS makes each home with the access point's CreationInfo, so no one needs root on the tree;
    the hub never mounts the homes (an operator's restore or migration is done with a role of
    their own, which this policy does not forbid).

    What IAM cannot express: binding one instance to its own user's access point. EFS
    identifies an NFS client by its IAM role (EFS user guide, "Using access points in IAM
    policies") and evaluates only ``aws:SecureTransport``, ``aws:SourceIp``,
    ``elasticfilesystem:AccessPointArn`` and ``elasticfilesystem:AccessedViaMountTarget`` for
    clients ("No other condition keys are enforced"), and ClientMount's only resource is the file
    system: no tag of the access point and no ``ec2:SourceInstanceARN`` is looked at. Every
    notebook shares the notebook role, so root on a notebook instance that knows another user's
    access point id (it is in that instance's tags only, which the notebook role cannot
    describe) could mount it. One role per user would close that, at one role per user.
    """
    own_role = [iam.ArnPrincipal(notebook_role.role_arn)]
    return [
        iam.PolicyStatement(
            sid="DenyWithoutTls",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=["*"],
            conditions={"Bool": {"aws:SecureTransport": "false"}},
        ),
        iam.PolicyStatement(
            sid="DenyNotebooksWithoutAccessPoint",
            effect=iam.Effect.DENY,
            principals=own_role,
            actions=[CLIENT_MOUNT, CLIENT_WRITE, CLIENT_ROOT_ACCESS],
            conditions={"Null": {ACCESS_POINT_ARN: "true"}},
        ),
        iam.PolicyStatement(
            sid="NotebooksThroughAccessPoints",
            principals=own_role,
            actions=[CLIENT_MOUNT, CLIENT_WRITE],
            conditions={
                "Bool": {"elasticfilesystem:AccessedViaMountTarget": "true"},
                "Null": {ACCESS_POINT_ARN: "false"},
            },
        ),
    ]


def access_point_statements(*, scope: Construct, hub_id: str, file_system_arn: str) -> list[iam.PolicyStatement]:
    """What the hub needs for the users' access points (ec2spawner EC2Spawner.home_access_point).

    CreateAccessPoint on the homes' file system only, with this hub's tag and only the tag keys
    the spawner sets. Creating with tags also needs TagResource, allowed only inside that creation
    (``elasticfilesystem:CreateAction``): the hub cannot retag another access point. Listing them
    (DescribeAccessPoints by file system, or by id for this hub's own) returns metadata only. No client action: the hub never
    mounts the homes.
    """
    access_points = Stack.of(scope).format_arn(
        service="elasticfilesystem", resource="access-point", resource_name="*"
    )
    return [
        iam.PolicyStatement(
            sid="CreateHomeAccessPoints",
            actions=["elasticfilesystem:CreateAccessPoint"],
            resources=[file_system_arn],
            conditions={
                "StringEquals": {f"aws:RequestTag/{TAG_HUB}": hub_id},
                "ForAllValues:StringEquals": {"aws:TagKeys": [TAG_HUB, TAG_UNIX_USER, "Name"]},
            },
        ),
        iam.PolicyStatement(
            sid="TagHomeAccessPointsAtCreation",
            # The access point's id is EFS's, unknown until it exists.
            actions=["elasticfilesystem:TagResource"],
            resources=[access_points],
            conditions={
                "StringEquals": {
                    "elasticfilesystem:CreateAction": "CreateAccessPoint",
                    f"aws:RequestTag/{TAG_HUB}": hub_id,
                }
            },
        ),
        iam.PolicyStatement(
            sid="FindHomeAccessPoints",
            actions=["elasticfilesystem:DescribeAccessPoints"],
            resources=[file_system_arn],
        ),
        iam.PolicyStatement(
            # One remembered access point, by id, before a start names it to an instance (an
            # administrator may have deleted it); only this hub's.
            sid="CheckHomeAccessPoints",
            actions=["elasticfilesystem:DescribeAccessPoints"],
            resources=[access_points],
            conditions={"StringEquals": {f"aws:ResourceTag/{TAG_HUB}": hub_id}},
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
