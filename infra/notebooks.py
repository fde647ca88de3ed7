"""Notebook instances: their security group, their role, and one launch template per catalog class.

The spawner launches every notebook with ``RunInstances(LaunchTemplate={id, "$Default"})`` plus
per-server tags and a subnet; everything else (AMI, type, disk, metadata options, role, user data)
comes from the class's template here. The user data is the same script for every class and every
user: per-server values reach the instance as tags and as its own SSM SecureString
(docs/ARCHITECTURE.md §3-§4), never through the template.
"""

from __future__ import annotations

from aws_cdk import Annotations, CfnTag, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import custom_resources as cr
from constructs import Construct
from ec2spawner.catalog import Catalog, InstanceClass
from ec2spawner.payloads import TAG_CLASS, TAG_HUB, TAG_INSTANCE_ARN

from .session import session_manager_statement
from .userdata import assemble_user_data

NOTEBOOK_PORT = 8888
# Construct id CDK gives the one Lambda shared by every AwsCustomResource in a stack.
AWS_CUSTOM_RESOURCE_PROVIDER_ID = "AWS679f53fac002430cb0da5b7982bd2287"
# Root device of Amazon Linux 2023 and the AL2023 Deep Learning AMIs. An AMI with another root
# device name (Ubuntu: /dev/sda1) would get this volume as a second disk instead.
ROOT_DEVICE = "/dev/xvda"


def class_construct_id(slug: str) -> str:
    """A construct id derived from the slug alone, so a class's logical ids never move.

    Adding a class adds resources under a new id; editing a class changes only the properties
    under its own id. Slugs are ``[a-z0-9-]``: CamelCase them to keep logical ids readable.
    """
    return "Class" + "".join(part.capitalize() for part in slug.split("-"))


def image_id(scope: Construct, ami: str) -> str:
    """An AMI id as is, or an ``ssm:<path>`` public parameter resolved by CloudFormation at deploy.

    ``MachineImage.from_ssm_parameter`` adds one ``AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>``
    template parameter per path (shared by classes naming the same path); no lookup at synth.
    """
    if ami.startswith("ssm:"):
        return (
            ec2.MachineImage.from_ssm_parameter(ami[len("ssm:") :])
            .get_image(scope)
            .image_id
        )
    return ami


def launch_template_data(
    cls: InstanceClass,
    *,
    hub_id: str,
    image: str,
    security_group_id: str,
    instance_profile_arn: str,
    user_data: str,
) -> dict:
    """The ``LaunchTemplateData`` of one class (CloudFormation property names)."""
    tags = [
        {"Key": TAG_HUB, "Value": hub_id},
        {"Key": TAG_CLASS, "Value": cls.slug},
    ]
    data: dict = {
        "ImageId": image,
        "InstanceType": cls.instance_types[0],
        "IamInstanceProfile": {"Arn": instance_profile_arn},
        # IMDSv2 only; hop limit 1 so no container or forwarded packet on the host can reach the
        # role credentials; tags in metadata are how the notebook learns who it serves.
        "MetadataOptions": {
            "HttpEndpoint": "enabled",
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": 1,
            "InstanceMetadataTags": "enabled",
        },
        # Security groups by id and no NetworkInterfaces: the spawner picks the subnet (private,
        # MapPublicIpOnLaunch false) and the hub's role may launch into no other subnet and never
        # with a public address, so a notebook never has one.
        "SecurityGroupIds": [security_group_id],
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {
                    "VolumeSize": cls.volume_gb,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        "UserData": user_data,
        # What a shutdown from inside the instance does (the notebook's idle backstop powers off,
        # docs/ARCHITECTURE.md §15): stop, keeping the root volume, so that a returning hub finds
        # the instance stopped and ends it or keeps it by its stop_mode (poll, the sweeper);
        # terminate for one-time spot, which EC2 cannot stop.
        "InstanceInitiatedShutdownBehavior": "terminate" if cls.is_spot else "stop",
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }
    if cls.is_spot:
        data["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            },
        }
    return data


class Notebooks(Construct):
    """The notebook security group, role, instance profile and per-class launch templates."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        catalog: Catalog,
        hub_id: str,
        secret_prefix: str,
        images: dict[str, str] | None = None,
        target: str | None = None,
    ) -> None:
        """``images``: the ImageId of the classes that do not launch their catalog ``ami`` as is
        (baked classes: ``resolve:ssm:<their image parameter>``), by slug. ``target``: the
        templates are those of the classes that launch in this catalog target (None: in the hub's
        own account, infra/target_stack.py makes the others)."""
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        images = images or {}

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="ec2hub notebook servers: jupyterhub-singleuser on 8888, reachable from the hub only",
            # Notebooks install packages, clone repositories, reach EFS and the hub API.
            allow_all_outbound=True,
        )

        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="ec2hub notebook instances: Session Manager and their own server secret",
        )
        self.role.add_to_policy(session_manager_statement())
        secret_arn_pattern = stack.format_arn(
            service="ssm",
            resource="parameter",
            resource_name=secret_prefix.lstrip("/") + "*",
        )
        # An instance reads its own secret and no other: the spawner tags each secret with the ARN
        # of the instance it belongs to (ARCHITECTURE.md §4); ec2:SourceInstanceARN is the ARN of
        # the instance whose role credentials sign the request.
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadOwnServerSecret",
                actions=["ssm:GetParameter"],
                resources=[secret_arn_pattern],
                conditions={
                    "StringEquals": {
                        f"ssm:resourceTag/{TAG_INSTANCE_ARN}": "${ec2:SourceInstanceARN}"
                    }
                },
            )
        )
        # SecureStrings use the aws/ssm key; decrypting is allowed only through SSM and only for
        # parameters under the secret prefix (SSM passes the parameter ARN as encryption context).
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="DecryptOwnServerSecretViaSsm",
                actions=["kms:Decrypt"],
                resources=[
                    stack.format_arn(service="kms", resource="key", resource_name="*")
                ],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"ssm.{stack.region}.amazonaws.com"
                    },
                    "StringLike": {
                        "kms:EncryptionContext:PARAMETER_ARN": secret_arn_pattern
                    },
                },
            )
        )
        self.instance_profile = iam.InstanceProfile(
            self, "InstanceProfile", role=self.role
        )

        user_data = assemble_user_data("notebook")
        if user_data.notice:
            Annotations.of(self).add_warning_v2(
                "ec2hub:user-data-compressed", user_data.notice
            )
        self.launch_templates: dict[str, ec2.CfnLaunchTemplate] = {}
        for cls in catalog.classes_of(target):
            scope_for_class = Construct(self, class_construct_id(cls.slug))
            template = ec2.CfnLaunchTemplate(
                scope_for_class,
                "LaunchTemplate",
                launch_template_name=f"ec2hub-{hub_id}-{cls.slug}",
                version_description=f"ec2hub class {cls.slug}: {cls.display_name}"[
                    :255
                ],
                # Filled below with CloudFormation names: one plain mapping, built and tested by
                # launch_template_data(), rather than a tree of L1 structs.
                launch_template_data={},
                tag_specifications=[
                    ec2.CfnLaunchTemplate.LaunchTemplateTagSpecificationProperty(
                        resource_type="launch-template",
                        tags=[
                            CfnTag(key=TAG_HUB, value=hub_id),
                            CfnTag(key=TAG_CLASS, value=cls.slug),
                        ],
                    )
                ],
            )
            template.add_property_override(
                "LaunchTemplateData",
                launch_template_data(
                    cls,
                    hub_id=hub_id,
                    # A baked class launches its newest image (infra/images.py), resolved by EC2.
                    image=images.get(cls.slug) or image_id(self, cls.ami),
                    security_group_id=self.security_group.security_group_id,
                    instance_profile_arn=self.instance_profile.instance_profile_arn,
                    user_data=user_data.base64,
                ),
            )
            self.launch_templates[cls.slug] = template
            self._make_latest_version_default(scope_for_class, template)
        self._drop_redundant_provider_dependency()

    @property
    def launch_template_arns(self) -> list[str]:
        stack = Stack.of(self)
        return [
            stack.format_arn(
                service="ec2", resource="launch-template", resource_name=t.ref
            )
            for t in self.launch_templates.values()
        ]

    def _drop_redundant_provider_dependency(self) -> None:
        """The custom resources' shared Lambda gets its role by GetAtt already; CDK also adds a
        DependsOn on the role, which cfn-lint reports (W3005). Drop the duplicate."""
        provider = Stack.of(self).node.try_find_child(AWS_CUSTOM_RESOURCE_PROVIDER_ID)
        if provider is None:
            return
        # In CDK 2.275 its DependsOn holds only that role; the Role GetAtt keeps the order.
        provider.node.default_child.add_deletion_override("DependsOn")

    @staticmethod
    def _make_latest_version_default(
        scope: Construct, template: ec2.CfnLaunchTemplate
    ) -> None:
        """Point the template's ``$Default`` at its newest version after every change.

        Updating ``LaunchTemplateData`` makes CloudFormation create a new version of the same
        template (same id, so the hub's IAM conditions and the settings stay valid), but it leaves
        the default version where it was: AWS::EC2::LaunchTemplate has no property for it
        (aws-cloudformation/cloudformation-coverage-roadmap#1518). The spawner launches
        ``$Default``, so this custom resource calls ModifyLaunchTemplate with the template's
        ``LatestVersionNumber``; that attribute changes on every edit, which re-runs the call.
        """
        stack = Stack.of(scope)
        call = cr.AwsSdkCall(
            service="EC2",
            action="modifyLaunchTemplate",
            parameters={
                "LaunchTemplateId": template.ref,
                "DefaultVersion": template.attr_latest_version_number,
            },
            physical_resource_id=cr.PhysicalResourceId.of(template.ref),
        )
        cr.AwsCustomResource(
            scope,
            "DefaultVersion",
            on_create=call,
            on_update=call,
            install_latest_aws_sdk=False,
            policy=cr.AwsCustomResourcePolicy.from_statements(
                [
                    iam.PolicyStatement(
                        actions=["ec2:ModifyLaunchTemplate"],
                        resources=[
                            stack.format_arn(
                                service="ec2",
                                resource="launch-template",
                                resource_name=template.ref,
                            )
                        ],
                    )
                ]
            ),
        )
