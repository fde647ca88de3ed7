"""Baked notebook images: one EC2 Image Builder pipeline per class with ``image: baked``.

Per baked class:

- a **component** whose build step is the notebook's image steps from bootstrap/ (common/venv.sh
  and notebook/install.sh, the same files the user data sources; infra/userdata.py assembles them)
  run as ``install.sh image <the class's packages>``, and a validate step that runs the server;
- an **image recipe** on the class's ``ami`` (an AMI id, or ``ssm:<public parameter>``, which Image
  Builder resolves at each build: the catalog's syntax is Image Builder's), with the class's
  encrypted gp3 root volume;
- an **infrastructure configuration**: the build instance in a private subnet (out through the
  NAT gateway, for PyPI), IMDSv2 only, a role that may only talk to Systems Manager (Image
  Builder drives the build through it), read its own components and write its build logs;
- a **distribution** that names the AMI, tags it and writes its id to the SSM parameter
  ``/ec2hub/<hub_id>/images/<slug>`` (Image Builder's ``SsmParameterConfigurations``);
- a **pipeline** (optionally scheduled: rebuilt only when the base image changed), and a
  **lifecycle policy** that deletes all but the newest ``image_versions_kept`` images (AMIs and
  snapshots) of the class.

The class's launch template names the image as ``resolve:ssm:<that parameter>``, which EC2
resolves at every launch (EC2 user guide, "Use a Systems Manager parameter instead of an AMI ID"):
every launch from the template's ``$Default`` version gets the newest published image, and a
rollback is a write of an older AMI id into the parameter (docs/DEPLOY.md). The stack creates the
parameter with the base AMI (a dynamic reference, resolved once when it is created and not again
on later deploys), so the class launches, on the slow path, before its first image exists; a
custom resource starts a build when the stack is created and whenever the recipe changes.

Components and recipes are immutable in Image Builder: their version is derived from their
content, so a changed install script or package list is a new version (CloudFormation replaces
the resource) and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import json

from aws_cdk import ArnFormat, CfnResource, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_imagebuilder as imagebuilder
from aws_cdk import aws_ssm as ssm
from aws_cdk import custom_resources as cr
from constructs import Construct
from ec2spawner.catalog import Catalog, InstanceClass
from ec2spawner.payloads import TAG_CLASS, TAG_HUB

from .config import ConfigError
from .notebooks import ROOT_DEVICE, class_construct_id
from .session import SESSION_MANAGER_ACTIONS
from .userdata import hub_image_script, image_script

# CloudFormation's limit on AWS::ImageBuilder::Component Data (characters).
MAX_COMPONENT_DATA = 16000
VENV = "/opt/ec2hub/venv"
HUB_NODE_BIN = "/opt/ec2hub/node/bin"
HUB_TAG_IMAGE = "ec2hub:image"  # the hub image's tag (its lifecycle's selection): value "hub"
# Run Command, through which Image Builder runs AWSTOE on the build instance, delivers its
# commands over ec2messages (Systems Manager user guide, "Reference: ec2messages, ssmmessages");
# none of these supports resource-level permissions.
RUN_COMMAND_AGENT_ACTIONS = [
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
]
# Image Builder's own bucket of AWSTOE binaries, which the build instance downloads (the AWS-managed
# EC2InstanceProfileForImageBuilder grants the same).
TOE_BUCKETS = "ec2imagebuilder-toe-*"
LIFECYCLE_POLICY = "service-role/EC2ImageBuilderLifecycleExecutionPolicy"


def image_parameter_name(hub_id: str, slug: str) -> str:
    """The SSM parameter that holds the newest baked image of a class (an AMI id)."""
    return f"/ec2hub/{hub_id}/images/{slug}"


def launch_image(hub_id: str, cls: InstanceClass) -> str | None:
    """The launch template's ImageId of a baked class (resolved by EC2 at launch); None if stock."""
    return f"resolve:ssm:{image_parameter_name(hub_id, cls.slug)}" if cls.baked else None


def content_version(*parts: str) -> str:
    """A semantic version (Image Builder's x.y.z) that changes whenever ``parts`` do."""
    digest = hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()
    return f"1.{int(digest[:6], 16)}.{int(digest[6:12], 16)}"


def component_document(cls: InstanceClass) -> str:
    """The AWSTOE document of a class's component (YAML; JSON is YAML): build, then validate."""
    return _document(
        f"class {cls.slug!r}", f"ec2hub-{cls.slug}-environment",
        "ec2hub notebook environment: bootstrap/notebook/install.sh image",
        image_script(list(cls.packages)).decode("utf-8"), f"{VENV}/bin/jupyterhub-singleuser --version",
    )


def hub_component_document() -> str:
    """The AWSTOE document of the hub image's component: the hub user data's own install steps."""
    return _document(
        "the hub image", "ec2hub-hub-environment",
        "ec2hub hub environment: bootstrap/hub/user-data.sh image (venv, Node, configurable-http-proxy)",
        hub_image_script().decode("utf-8"), f"{VENV}/bin/jupyterhub --version && {HUB_NODE_BIN}/configurable-http-proxy --version",
    )


def hub_image_parameter_name(hub_id: str) -> str:
    """The SSM parameter that holds the newest baked hub image (an AMI id)."""
    return f"/ec2hub/{hub_id}/hub-image"


def _document(what: str, name: str, description: str, script: str, validate: str) -> str:
    if "{{" in script:  # AWSTOE would substitute it as a variable
        raise ConfigError(f"{what}: the image build script must not contain '{{{{'")
    document = {
        "name": name,
        "description": description,
        "schemaVersion": 1.0,
        "phases": [
            {
                "name": "build",
                "steps": [
                    {
                        "name": "InstallNotebookEnvironment",
                        "action": "ExecuteBash",
                        "inputs": {"commands": [script]},
                    }
                ],
            },
            {
                "name": "validate",
                "steps": [
                    {
                        "name": "ServerRuns",
                        "action": "ExecuteBash",
                        "inputs": {"commands": [validate]},
                    }
                ],
            },
        ],
    }
    data = json.dumps(document, indent=1, sort_keys=True)
    if len(data) > MAX_COMPONENT_DATA:
        raise ConfigError(
            f"{what}: the image component is {len(data)} characters, over "
            f"CloudFormation's {MAX_COMPONENT_DATA}: shorten packages"
        )
    return data


def parent_image(cls: InstanceClass) -> str:
    """The recipe's ParentImage: the catalog's ``ami`` as is (``ssm:<path>`` or an AMI id)."""
    return cls.ami


def base_image_value(cls: InstanceClass) -> str:
    """The image parameter's first value: the base AMI, resolved once when the parameter is made.

    A dynamic reference, not a template parameter: CloudFormation resolves it when it creates or
    updates the parameter resource, and does not update the resource when only the referenced
    value changes, so a redeploy after AWS publishes a newer base AMI leaves the baked image in
    place (CloudFormation user guide, "Get values stored in other services using dynamic references").
    """
    if cls.ami.startswith("ssm:"):
        return "{{resolve:ssm:" + cls.ami[len("ssm:") :] + "}}"
    return cls.ami


class ClassImages(Construct):
    """The Image Builder pipeline, its parts and the image parameter of every baked class, and of
    the hub when ``hub_parent`` is given (the hub image's base: an AMI id or ``ssm:<path>``)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        build_subnet: ec2.ISubnet,
        catalog: Catalog,
        hub_id: str,
        versions_kept: int,
        build_schedule: str | None,
        hub_parent: str | None = None,
        hub_instance_type: str = "t3.medium",
        hub_volume_gb: int = 30,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        baked = [c for c in catalog.classes if c.baked]
        self.parameters: dict[str, ssm.CfnParameter] = {}
        self.pipelines: dict[str, imagebuilder.CfnImagePipeline] = {}
        self.security_group: ec2.SecurityGroup | None = None
        self.hub_parameter: ssm.CfnParameter | None = None
        self.hub_pipeline: imagebuilder.CfnImagePipeline | None = None
        if not baked and not hub_parent:
            return

        self.security_group = ec2.SecurityGroup(
            self,
            "BuildSecurityGroup",
            vpc=vpc,
            description="ec2hub image builds: no inbound; out to PyPI and Systems Manager",
            allow_all_outbound=True,  # pip reaches PyPI (or a mirror) over HTTPS through the NAT
        )
        self.role = iam.Role(
            self,
            "BuildRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="ec2hub image build instances: Systems Manager, their components, their logs",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="SystemsManagerAgent",
                actions=[*SESSION_MANAGER_ACTIONS, *RUN_COMMAND_AGENT_ACTIONS],
                resources=["*"],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadAwstoe",
                actions=["s3:GetObject"],
                resources=[f"arn:{stack.partition}:s3:::{TOE_BUCKETS}/*"],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteBuildLogs",
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[
                    stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name=f"/aws/imagebuilder/ec2hub-{hub_id}-*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        profile = iam.InstanceProfile(self, "BuildInstanceProfile", role=self.role)

        lifecycle_role = iam.Role(
            self,
            "LifecycleRole",
            assumed_by=iam.ServicePrincipal("imagebuilder.amazonaws.com"),
            description="ec2hub image lifecycle: deletes the class images past the versions kept",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(LIFECYCLE_POLICY)],
        )
        self.lifecycle_role = lifecycle_role

        self.component_arns: list[str] = []
        for cls in baked:
            parameter, pipeline = self._bake(
                scope_id=class_construct_id(cls.slug), label=f"class {cls.slug}", role="notebook",
                change="bootstrap/notebook/install.sh or the class's packages changed",
                name=f"ec2hub-{hub_id}-{cls.slug}", tags={TAG_HUB: hub_id, TAG_CLASS: cls.slug},
                data=component_document(cls), parent=parent_image(cls), base=cls.ami, volume_gb=cls.volume_gb,
                instance_types=list(cls.instance_types), parameter_name=image_parameter_name(hub_id, cls.slug),
                parameter_value=base_image_value(cls), build_subnet=build_subnet, profile=profile,
                versions_kept=versions_kept, build_schedule=build_schedule,
            )
            self.parameters[cls.slug] = parameter
            self.pipelines[cls.slug] = pipeline
        if hub_parent:
            base = hub_parent.removeprefix("ssm:")
            self.hub_parameter, self.hub_pipeline = self._bake(
                scope_id="Hub", label="hub", role="hub",
                change="bootstrap/hub/user-data.sh or bootstrap/common/venv.sh changed",
                name=f"ec2hub-{hub_id}-hub", tags={TAG_HUB: hub_id, HUB_TAG_IMAGE: "hub"},
                data=hub_component_document(), parent=hub_parent, base=base, volume_gb=hub_volume_gb,
                instance_types=[hub_instance_type], parameter_name=hub_image_parameter_name(hub_id),
                parameter_value="{{resolve:ssm:" + base + "}}" if hub_parent.startswith("ssm:") else hub_parent,
                build_subnet=build_subnet, profile=profile, versions_kept=versions_kept,
                build_schedule=build_schedule,
            )

        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadOwnComponents",
                actions=["imagebuilder:GetComponent"],
                resources=self.component_arns,
            )
        )

    def _bake(
        self, *, scope_id: str, label: str, role: str, change: str, name: str, tags: dict[str, str], data: str,
        parent: str, base: str, volume_gb: int, instance_types: list[str], parameter_name: str,
        parameter_value: str, build_subnet: ec2.ISubnet, profile: iam.InstanceProfile, versions_kept: int,
        build_schedule: str | None,
    ) -> tuple[ssm.CfnParameter, imagebuilder.CfnImagePipeline]:
        """One image's component, recipe, infrastructure, parameter, distribution, pipeline,
        lifecycle and build (a baked class's, or the hub's)."""
        stack = Stack.of(self)
        class_scope = Construct(self, scope_id)
        component = imagebuilder.CfnComponent(
            class_scope,
            "Component",
            name=name,
            platform="Linux",
            version=content_version(data),
            data=data,
            description=f"ec2hub {label}: the {role} environment"[:1024],
            change_description=change,
            tags=tags,
        )
        volume = {
            "DeviceName": ROOT_DEVICE,
            "Ebs": {
                "VolumeSize": volume_gb,
                "VolumeType": "gp3",
                "Encrypted": True,
                "DeleteOnTermination": True,
            },
        }
        recipe = imagebuilder.CfnImageRecipe(
            class_scope,
            "Recipe",
            name=name,
            version=content_version(
                parent, str(component.version), json.dumps(volume, sort_keys=True)
            ),
            parent_image=parent,
            components=[],  # CloudFormation names below, as for the launch templates
            description=f"ec2hub {label} on {base}"[:1024],
            tags=tags,
        )
        _override(recipe, {
            "Components": [{"ComponentArn": component.attr_arn}],
            "BlockDeviceMappings": [volume],
            # AL2023 and its Deep Learning AMIs ship the SSM agent; keep it (Session Manager).
            "AdditionalInstanceConfiguration": {"SystemsManagerAgent": {"UninstallAfterBuild": False}},
        })
        infrastructure = imagebuilder.CfnInfrastructureConfiguration(
            class_scope,
            "Infrastructure",
            name=name,
            instance_profile_name=profile.instance_profile_name,
            instance_types=list(instance_types),
            subnet_id=build_subnet.subnet_id,
            security_group_ids=[self.security_group.security_group_id],
            terminate_instance_on_failure=True,
            description=f"ec2hub {label}: build instances in a private subnet",
            tags=tags,
            resource_tags=tags,
        )
        # IMDSv2 only, no hop beyond the instance (as the notebooks' templates).
        _override(infrastructure, {
            "InstanceMetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        })
        parameter = ssm.CfnParameter(
            class_scope,
            "ImageParameter",
            name=parameter_name,
            type="String",
            data_type="aws:ec2:image",
            value=parameter_value,
            # Kept constant: a change here would make CloudFormation write the base AMI again.
            description=f"ec2hub {label}: the AMI its launch template launches",
        )
        distribution = imagebuilder.CfnDistributionConfiguration(
            class_scope,
            "Distribution",
            name=name,
            description=f"ec2hub {label}: the AMI, and its id in {parameter.name}",
            distributions=[],
            tags=tags,
        )
        _override(distribution, {"Distributions": [{
            "Region": stack.region,
            "AmiDistributionConfiguration": {
                "Name": f"{name}-{{{{ imagebuilder:buildDate }}}}",
                "Description": f"ec2hub {label}",
                "AmiTags": tags,
            },
            "SsmParameterConfigurations": [
                {"ParameterName": parameter.name, "DataType": "aws:ec2:image"}
            ],
        }]})
        distribution.node.add_dependency(parameter)
        pipeline = imagebuilder.CfnImagePipeline(
            class_scope,
            "Pipeline",
            name=name,
            description=f"ec2hub {label}: bakes its {role} image",
            image_recipe_arn=recipe.attr_arn,
            infrastructure_configuration_arn=infrastructure.attr_arn,
            distribution_configuration_arn=distribution.attr_arn,
            enhanced_image_metadata_enabled=True,
            status="ENABLED",
            tags=tags,
        )
        _override(pipeline, {
            "ImageTestsConfiguration": {"ImageTestsEnabled": True, "TimeoutMinutes": 60},
            # Rebuilt on schedule only when the base image (or a component) has a newer version.
            **({"Schedule": {
                "ScheduleExpression": build_schedule,
                "PipelineExecutionStartCondition": "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE",
            }} if build_schedule else {}),
        })
        lifecycle = imagebuilder.CfnLifecyclePolicy(
            class_scope,
            "Lifecycle",
            name=name,
            description=f"ec2hub {label}: keeps the newest {versions_kept} images",
            execution_role=self.lifecycle_role.role_arn,
            resource_type="AMI_IMAGE",
            policy_details=[],
            resource_selection={},
            status="ENABLED",
            tags=tags,
        )
        _override(lifecycle, {
            "PolicyDetails": [{
                "Action": {"Type": "DELETE", "IncludeResources": {"Amis": True, "Snapshots": True}},
                "Filter": {"Type": "COUNT", "Value": versions_kept},
            }],
            # Its images: the pipeline's tags, which its images carry.
            "ResourceSelection": {"TagMap": tags},
        })
        self._build_when_changed(class_scope, pipeline, recipe)
        self.component_arns.append(component.attr_arn)
        return parameter, pipeline

    @staticmethod
    def _build_when_changed(
        scope: Construct, pipeline: imagebuilder.CfnImagePipeline, recipe: imagebuilder.CfnImageRecipe
    ) -> None:
        """Start a build when the stack creates the pipeline and whenever its recipe changes.

        The client token (at most 36 characters) is derived from the recipe version, so an unchanged
        recipe is no change to this resource, and StartImagePipelineExecution is idempotent per token.
        """
        token = hashlib.sha256(f"{pipeline.name}/{recipe.version}".encode()).hexdigest()[:36]
        call = cr.AwsSdkCall(
            service="Imagebuilder",
            action="startImagePipelineExecution",
            parameters={
                "imagePipelineArn": pipeline.attr_arn,
                "clientToken": token,
            },
            physical_resource_id=cr.PhysicalResourceId.of(token),
        )
        cr.AwsCustomResource(
            scope,
            "Build",
            on_create=call,
            on_update=call,
            install_latest_aws_sdk=False,
            policy=cr.AwsCustomResourcePolicy.from_statements(
                [
                    iam.PolicyStatement(
                        actions=["imagebuilder:StartImagePipelineExecution"],
                        resources=[pipeline.attr_arn],
                    )
                ]
            ),
        )


def _override(resource: CfnResource, properties: dict) -> None:
    """Set nested properties by their CloudFormation names: plain mappings, as the launch
    templates' data (jsii passes a dict given for a struct through with its keys as written)."""
    for key, value in properties.items():
        resource.add_property_override(key, value)
