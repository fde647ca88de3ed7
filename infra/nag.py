"""Every finding of the three security linters this stack accepts, each with why: the one place.

- **cdk-nag** (AwsSolutions) runs at synth over the whole app. cdk-nag 3.x is a CDK validation
  plugin: an unacknowledged finding makes ``app.synth()`` fail and writes ``validation-report.json``
  into the cloud assembly. Each acknowledgment is attached to the one construct it concerns and
  names one finding (``Rule[finding]``), never a whole rule.
- **checkov** runs over the synthesized template (tests/infra/test_infra_linters.py). Its
  acknowledgments go into the template as the resource's ``Metadata.checkov.skip`` (checkov's own
  suppression format), so a checkov run by anyone on ``cdk.out`` reports them as skipped, with
  the reason, and nothing as failed.
- **parliament** lints every identity policy of the template (the same test). It has no
  suppression of its own: :data:`PARLIAMENT_ACKNOWLEDGED` lists each accepted finding by the
  policy's construct path and the finding's issue.

cdk-nag does not check launch templates that no Instance or Auto Scaling group uses, so the
notebook templates' encryption, IMDSv2 and public-IP settings are asserted in tests/infra instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Acknowledgment, App, CfnResource, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

from .notebooks import AWS_CUSTOM_RESOURCE_PROVIDER_ID

if TYPE_CHECKING:
    from .stack import Ec2HubStack
    from .target_stack import Ec2HubTargetStack

LAMBDA_BASIC_POLICY = "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"


def add_checks(app: App) -> None:
    """Run the AwsSolutions pack over every stack of ``app`` at synth."""
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def acknowledge(scope: IConstruct, finding: str, reason: str) -> None:
    """Acknowledge one AwsSolutions finding (``IAM5[Resource::...]``, ``S1``...) on ``scope``."""
    Validations.of(scope).acknowledge(
        Acknowledgment(id=f"AwsSolutions::AwsSolutions-{finding}", reason=reason)
    )


SESSION_MANAGER_WRITES = (
    "The Session Manager agent's calls (ssm:UpdateInstanceInformation, ssmmessages:*Channel) "
    "support no resource-level permissions (Resource must be *); Session Manager is the only shell "
    "access (no SSH keys). Every other write of this policy names its resources."
)

# parliament findings accepted, by (construct path of the policy in the stack, issue).
PARLIAMENT_ACKNOWLEDGED: dict[tuple[str, str], str] = {
    ("Hub/Role/DefaultPolicy", "RESOURCE_MISMATCH"): (
        "parliament expects every statement that allows ec2:RunInstances to name all the resource "
        "types RunInstances needs; the policy splits them into one statement per resource type on "
        "purpose, so that each type gets its own conditions (catalog instance types, IMDSv2, "
        "encrypted template volumes, notebook subnets, no public address)."
    ),
    ("Hub/Role/DefaultPolicy", "PRIVILEGE_ESCALATION"): (
        "iam:PassRole with ec2:RunInstances is what a spawner does: it may pass only the notebook "
        "role, only to EC2, and launch only from this stack's templates with the notebook instance "
        "profile (ec2:InstanceProfile), so it cannot give an instance any other role."
    ),
    ("Hub/Role/DefaultPolicy", "PERMISSIONS_MANAGEMENT_ACTIONS"): (
        "The one permissions-management action is iam:PassRole, on the notebook role's exact ARN "
        "with iam:PassedToService = ec2.amazonaws.com; notebook instances need their role."
    ),
    ("Notebooks/Role/DefaultPolicy", "UNKNOWN_CONDITION_FOR_ACTION"): (
        "ssm:resourceTag/<key> is SSM's documented tag condition for GetParameter (Systems Manager "
        "user guide, 'Restricting access to parameters using tags'); parliament's action table "
        "lists only aws:ResourceTag for it. It limits each instance to its own secret."
    ),
}


def acknowledge_checkov(scope: IConstruct, check: str, reason: str) -> None:
    """Skip one checkov check on the CloudFormation resource of ``scope``, with the reason."""
    resource = scope if isinstance(scope, CfnResource) else scope.node.default_child
    assert isinstance(resource, CfnResource), scope.node.path
    skips = list((resource.get_metadata("checkov") or {}).get("skip", []))
    skips.append({"id": check, "comment": reason})
    resource.add_metadata("checkov", {"skip": skips})


def acknowledge_findings(stack: Ec2HubStack) -> None:
    """Every finding the design accepts, each with the reason it is acceptable."""
    region, account = stack.region, stack.account

    def arn(service: str, resource: str, with_account: bool = True) -> str:
        return f"Resource::arn:<AWS::Partition>:{service}:{region}:{account if with_account else ''}:{resource}"

    hub_id = stack.config.hub_id
    hub_role = stack.hub.role
    secrets = f"parameter{stack.config.secret_prefix}*"
    hub_parameters = f"parameter{stack.config.ssm_prefix}*"
    _acknowledge_notebook_role(stack.notebooks.role, arn, secrets)

    hub_policy = hub_role.node.find_child("DefaultPolicy")
    hub_findings = {
        **_launch_findings(arn, hub_id, secrets),
        arn("ssm", hub_parameters): "Read-only access to this hub's own parameters "
        "(settings document, OAuth client secret) under /ec2hub/<hub_id>/.",
    }
    for resource, reason in hub_findings.items():
        acknowledge(hub_policy, f"IAM5[{resource}]", reason)
    _acknowledge_rest_of_hub(stack, arn, hub_id)


def acknowledge_target_findings(stack: Ec2HubTargetStack) -> None:
    """What a target stack accepts: the notebook role's and the hub-access role's wildcards, for
    the same reasons as the hub stack's (the same statements), and CDK's custom resource Lambda."""
    region, account = stack.region, stack.account

    def arn(service: str, resource: str, with_account: bool = True) -> str:
        return f"Resource::arn:<AWS::Partition>:{service}:{region}:{account if with_account else ''}:{resource}"

    secrets = f"parameter{stack.config.secret_prefix}*"
    _acknowledge_notebook_role(stack.notebooks.role, arn, secrets)
    policy = stack.hub_access.node.find_child("DefaultPolicy")
    for resource, reason in _launch_findings(arn, stack.config.hub_id, secrets).items():
        acknowledge(policy, f"IAM5[{resource}]", reason)
    acknowledge_checkov(stack.notebooks.role.node.find_child("DefaultPolicy"), "CKV_AWS_111", SESSION_MANAGER_WRITES)
    _acknowledge_custom_resource_provider(stack)


def _acknowledge_notebook_role(notebook_role, arn, secrets: str) -> None:
    session_manager = (
        "The SSM agent's Session Manager channel calls (ssm:UpdateInstanceInformation, "
        "ssmmessages:*Channel) support no resource-level permissions; Session Manager is the only "
        "shell access (no SSH keys)."
    )
    acknowledge(
        notebook_role.node.find_child("DefaultPolicy"),
        "IAM5[Resource::*]",
        session_manager,
    )
    acknowledge(
        notebook_role.node.find_child("DefaultPolicy"),
        f"IAM5[{arn('ssm', secrets)}]",
        "Secret names end in the instance id, unknown at deploy time; the statement's condition "
        "ssm:resourceTag/ec2hub:instance-arn = ${ec2:SourceInstanceARN} limits each instance to its own secret.",
    )
    acknowledge(
        notebook_role.node.find_child("DefaultPolicy"),
        f"IAM5[{arn('kms', 'key/*')}]",
        "SecureStrings use the AWS-managed aws/ssm key, whose id is not known at synth; Decrypt is "
        "allowed only via SSM (kms:ViaService) and only for parameters under the secret prefix "
        "(kms:EncryptionContext:PARAMETER_ARN).",
    )


def _launch_findings(arn, hub_id: str, secrets: str) -> dict[str, str]:
    """The wildcards of infra.hub.launch_statements, each with why (by cdk-nag's resource name)."""
    return {
        arn(
            "ec2", "instance/*"
        ): "RunInstances creates instances whose ids cannot be known in advance; "
        "allowed only through a launch template, and only this stack's templates may be used "
        "(UseOwnLaunchTemplates lists their exact ARNs), only with a catalog instance type, "
        "IMDSv2 required with hop limit 1 and the notebook instance profile (RunInstancesAsTemplated). "
        "Start/Stop/Terminate need "
        f"aws:ResourceTag/ec2hub:hub = {hub_id} and a class tag (notebooks only, never the hub).",
        arn(
            "ec2", "volume/*"
        ): "RunInstances creates the root volume; allowed only when launching "
        "from this stack's launch templates (ec2:LaunchTemplate), only encrypted (ec2:Encrypted) "
        "and only the template's own volumes (ec2:IsLaunchTemplateResource: no block-device override).",
        arn(
            "ec2", "spot-instances-request/*"
        ): "Spot classes create a spot request at launch; "
        "allowed only when launching from this stack's launch templates (ec2:LaunchTemplate).",
        arn(
            "ec2", "network-interface/*"
        ): "RunInstances creates the primary network interface; "
        "allowed only from this stack's templates and never with a public address "
        "(ec2:AssociatePublicIpAddress). CreateTags on it only at launch.",
        arn(
            "ec2", "image/*", with_account=False
        ): "The AMI is resolved from a public SSM parameter at "
        "deploy time (a baked class's from its image parameter at launch); it must be the one in "
        "the launch template (ec2:IsLaunchTemplateResource = true).",
        arn(
            "ec2", "security-group/*"
        ): "The security group must be the one in the launch template "
        "(ec2:IsLaunchTemplateResource = true with ec2:LaunchTemplate = this stack's templates).",
        "Resource::*": "EC2 Describe* calls (instances, types, subnets, templates, spot requests, "
        "spot price history), pricing:GetProducts (public prices), ssm:DescribeParameters and the "
        "SSM agent's Session Manager channel calls support no resource-level permissions; none of "
        "them reads a secret value.",
        arn(
            "ssm", secrets
        ): "The spawner writes and deletes one SecureString per notebook instance, "
        "named by its instance id, under this hub's own secret prefix only.",
        arn(
            "kms", "key/*"
        ): "SecureStrings use the AWS-managed aws/ssm key, whose id is not known at "
        "synth; use is allowed only via SSM and only for this hub's parameters (encryption context).",
    }


def _acknowledge_rest_of_hub(stack: Ec2HubStack, arn, hub_id: str) -> None:
    acknowledge(
        stack.hub_signal_policy,
        f"IAM5[{arn('cloudformation', f'stack/{stack.stack_name}/*')}]",
        "A stack's ARN ends in an id CloudFormation generates at creation; SignalResource is allowed "
        "on this stack only, which the hub's first boot signals once its hub answers (the group's "
        "creation and replacing update wait for it).",
    )
    acknowledge(
        stack.hub.group,
        "AS3",
        "A group of exactly one never scales: its only activities are a deploy's replacing update "
        "(in CloudFormation's stack events) and the replacement of a lost hub host, which its users "
        "see at once and the group's activity history records. No SNS topic is wired for them.",
    )
    acknowledge(
        stack.hub_homes_policy,
        f"IAM5[{arn('elasticfilesystem', 'access-point/*')}]",
        "Each user's home access point gets an id EFS generates: TagResource is allowed only inside "
        f"CreateAccessPoint (elasticfilesystem:CreateAction) with aws:RequestTag/ec2hub:hub = {hub_id}; "
        "CreateAccessPoint itself only on the homes' file system, by its ARN; DescribeAccessPoints by id "
        f"only of access points tagged ec2hub:hub = {hub_id} (aws:ResourceTag).",
    )

    acknowledge(
        stack.hub.log_bucket,
        "S1",
        "This bucket receives the load balancer's access logs; logging its own access would "
        "need another bucket whose logs go nowhere. Public access is blocked and SSL enforced.",
    )
    if stack.config.allowed_ingress_cidr == "0.0.0.0/0":
        acknowledge(
            stack.hub.alb_security_group,
            "EC23",
            "The load balancer is the public entry point of the hub: users sign in from anywhere. "
            "It listens only on 80/443 (80 redirects when HTTPS is on); set allowed_ingress_cidr to narrow it.",
        )

    _acknowledge_custom_resource_provider(stack)
    _acknowledge_hub_secrets_and_state(stack)


def _acknowledge_custom_resource_provider(stack) -> None:
    provider = stack.node.try_find_child(AWS_CUSTOM_RESOURCE_PROVIDER_ID)
    if provider is not None:
        acknowledge(
            provider.node.find_child("ServiceRole"),
            f"IAM4[{LAMBDA_BASIC_POLICY}]",
            "The CDK AwsCustomResource Lambda that sets each launch template's default version "
            "(and starts a baked class's image build) writes its own CloudWatch logs; its other "
            "permissions are ModifyLaunchTemplate on this stack's templates and "
            "StartImagePipelineExecution on its pipelines only.",
        )
        lambda_function = provider.node.find_child("Resource")
        for check, reason in {
            "CKV_AWS_115": "CDK's AwsCustomResource Lambda runs only when CloudFormation calls it "
            "(once per launch template change); a concurrency limit would only fail a deploy.",
            "CKV_AWS_116": "CloudFormation invokes the AwsCustomResource Lambda synchronously and "
            "reports a failure on the stack itself; a dead-letter queue would never receive anything.",
            "CKV_AWS_117": "The AwsCustomResource Lambda calls only the EC2 API "
            "(ModifyLaunchTemplate) and Image Builder (StartImagePipelineExecution); in the VPC it "
            "would need a NAT or endpoints for nothing.",
        }.items():
            acknowledge_checkov(lambda_function, check, reason)


def _acknowledge_hub_secrets_and_state(stack: Ec2HubStack) -> None:
    if stack.admin is not None:
        admin_secret = stack.admin.secret
        acknowledge(
            admin_secret,
            "SMG4",
            "The secret is the admin's initial password only: the hub creates the account from it at "
            "first start and the admin changes the password in the hub, so rotating the secret would "
            "change nothing. Only the hub role may read it.",
        )
        acknowledge_checkov(
            admin_secret,
            "CKV_AWS_149",
            "Encrypted with the AWS-managed aws/secretsmanager key; a customer key would add $1 a month "
            "and a key policy but no reader: the hub role's GetSecretValue on this one ARN is the only grant.",
        )
    if stack.identity is not None:
        client_secret = stack.identity.secret
        acknowledge(
            client_secret,
            "SMG4",
            "The secret is the OAuth client secret the identity provider issued: only the provider can "
            "rotate it (a new secret there, then put-secret-value here; the hub reads it at every start).",
        )
        acknowledge_checkov(
            client_secret,
            "CKV_AWS_149",
            "Encrypted with the AWS-managed aws/secretsmanager key; a customer key would add $1 a month "
            "and a key policy but no reader: the hub role's GetSecretValue on this one ARN is the only grant.",
        )
    if stack.identity is not None and stack.identity.google_key_secret_name:
        google_key = stack.identity.google_key_secret
        acknowledge(
            google_key,
            "SMG4",
            "The secret is a Google service account's key, which only Google Cloud can issue: rotate it "
            "there (a new key, put-secret-value here, then delete the old key at Google); the hub reads "
            "it at every start.",
        )
        acknowledge_checkov(
            google_key,
            "CKV_AWS_149",
            "Encrypted with the AWS-managed aws/secretsmanager key; a customer key would add $1 a month "
            "and a key policy but no reader: the hub role's GetSecretValue on this one ARN is the only grant.",
        )

    state = stack.state
    acknowledge(
        state.database_secret,
        "SMG4",
        "Rotating the database password needs a rotation Lambda in the VPC (and a route to Secrets "
        "Manager); the hub reads the secret at every start, so a manual rotation (docs/DEPLOY.md) "
        "takes effect at the next hub restart. Only the hub role may read it.",
    )
    for secret, what in ((state.cookie_secret, "cookie secret"), (state.proxy_token, "proxy token")):
        acknowledge(
            secret,
            "SMG4",
            f"The {what} is kept on purpose so that a replaced hub keeps users signed in and its "
            "proxy: rotating it would sign everyone out (or cut the hub from its proxy). Only the "
            "hub role may read it; docs/DEPLOY.md says how to rotate it by hand.",
        )
    for secret in (state.database_secret, state.cookie_secret, state.proxy_token):
        acknowledge_checkov(
            secret,
            "CKV_AWS_149",
            "Encrypted with the AWS-managed aws/secretsmanager key; a customer key would add $1 a "
            "month and a key policy but no reader: the hub role's GetSecretValue on this one ARN is "
            "the only grant.",
        )
    acknowledge(
        state.database,
        "RDS3",
        "One hub serves a small team: a Multi-AZ standby doubles the database's cost (docs/DEPLOY.md) "
        "for a failover the hub can do without (a restore from the automated backups, 7 days, or the "
        "final snapshot brings it back; the hub itself waits for its database at start).",
    )
    for check, reason in {
        "CKV_AWS_157": "Multi-AZ doubles the database's cost for a small team's hub; restores come from "
        "the 7 days of automated backups or the final snapshot (as cdk-nag RDS3 above).",
        "CKV_AWS_118": "Enhanced monitoring needs its own IAM role and bills its OS metrics as CloudWatch "
        "Logs; the instance's standard CloudWatch metrics (CPU, connections, storage) cover one hub's database.",
        "CKV_AWS_161": "JupyterHub keeps one SQLAlchemy URL for its connection pool; IAM auth tokens "
        "expire after 15 minutes, so every new connection after that would fail. The password is "
        "generated into Secrets Manager and only the hub role may read it.",
    }.items():
        acknowledge_checkov(state.database, check, reason)
    acknowledge(
        state.database,
        "RDS11",
        "A non-default port hides nothing from a client inside the VPC: the database's security "
        "group admits only the hub's security group, on PostgreSQL's port.",
    )

    acknowledge_checkov(
        stack.hub.lease_table,
        "CKV_AWS_119",
        "The lease table holds one item per hub: which hub process holds the lease and until when "
        "(no secret, no user data). It is encrypted at rest with the AWS-managed key; a customer "
        "key would add $1 a month and a key policy, and only the hub role may touch the item.",
    )
    acknowledge_checkov(
        stack.hub.spend_table,
        "CKV_AWS_119",
        "The spend table holds user and group names with their hours and dollars per month and each "
        "instance's billing mark (no secret). It is encrypted at rest with the AWS-managed key; only "
        "the hub role may read or write it (RecordSpend).",
    )

    # --- checkov -------------------------------------------------------------------------------
    for policy in (stack.notebooks.role, stack.hub.role):
        acknowledge_checkov(
            policy.node.find_child("DefaultPolicy"),
            "CKV_AWS_111",
            SESSION_MANAGER_WRITES,
        )
    acknowledge_checkov(
        stack.hub.log_bucket,
        "CKV_AWS_18",
        "This bucket receives the load balancer's access logs; logging its own access would need "
        "another bucket whose logs go nowhere (as cdk-nag S1 above).",
    )
    acknowledge_checkov(
        stack.hub.log_bucket,
        "CKV_AWS_21",
        "Access-log objects are written once by the load balancer and expire after 365 days; "
        "versions would only keep expired logs. Nothing but the ELB log service may write here.",
    )
    if stack.config.allowed_ingress_cidr == "0.0.0.0/0":
        acknowledge_checkov(
            stack.hub.alb_security_group,
            "CKV_AWS_260",
            "Port 80 is open to the world because the hub is: with HTTPS it only redirects to 443; "
            "without, the operator asked for plain HTTP (allow_http). allowed_ingress_cidr narrows it.",
        )
    if not stack.config.https:
        listener = stack.hub.load_balancer.node.find_child("Http")
        for check in ("CKV_AWS_2", "CKV_AWS_103"):
            acknowledge_checkov(
                listener,
                check,
                "Plain HTTP only because the deployment set allow_http (synth refuses it "
                "otherwise); with certificate_arn the listener is HTTPS with a TLS 1.2+ policy.",
            )
    acknowledge_image_findings(stack)


def acknowledge_image_findings(stack: Ec2HubStack) -> None:
    """The baked classes' Image Builder parts (infra/images.py), when the catalog has any."""
    images = stack.images
    if images.security_group is None:
        return
    region, account = stack.region, stack.account
    build_policy = images.role.node.find_child("DefaultPolicy")
    for resource, reason in {
        "Resource::*": "The SSM agent's Run Command (ec2messages:*) and Session Manager "
        "(ssmmessages:*, ssm:UpdateInstanceInformation) calls, through which Image Builder drives the "
        "build instance, support no resource-level permissions; nothing else in this policy is *.",
        "Resource::arn:<AWS::Partition>:s3:::ec2imagebuilder-toe-*/*": "Read-only GetObject on "
        "Image Builder's own AWSTOE buckets (one per region, named by AWS), from which the build "
        "instance downloads the component runner; the same grant as EC2InstanceProfileForImageBuilder.",
        f"Resource::arn:<AWS::Partition>:logs:{region}:{account}:log-group:/aws/imagebuilder/"
        f"ec2hub-{stack.config.hub_id}-*": "Image Builder names each build's log group after the "
        "image (/aws/imagebuilder/<recipe name>); the builds may write only to this hub's classes' groups.",
    }.items():
        acknowledge(build_policy, f"IAM5[{resource}]", reason)
    acknowledge_checkov(build_policy, "CKV_AWS_111", (
        "The SSM agent's Run Command and Session Manager calls support no resource-level "
        "permissions; the log writes are limited to this hub's image build log groups."
    ))
    acknowledge(
        images.lifecycle_role,
        "IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/EC2ImageBuilderLifecycleExecutionPolicy]",
        "The policy AWS maintains for Image Builder lifecycle execution: it deletes and deprecates "
        "only images, AMIs and snapshots that Image Builder created (the CreatedBy tag condition), "
        "and lifecycle actions change as the service adds resource kinds.",
    )
