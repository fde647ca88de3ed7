"""What the SSM agent needs for Session Manager, the only shell access to hub and notebooks.

Not the AWS-managed AmazonSSMManagedInstanceCore: that policy also allows ``ssm:GetParameter`` and
``ssm:GetParameters`` on every parameter, and a notebook user with a shell could then read every
other server's secret (their JupyterHub API token; the aws/ssm key lets any principal of the
account decrypt through SSM). These five actions are the Session Manager-only set (the one in the
AWS-managed AWSCloud9SSMInstanceProfile; Systems Manager user guide, "Create a custom IAM role for
Session Manager"). They support no resource-level scoping.
"""

from __future__ import annotations

from aws_cdk import aws_iam as iam

SESSION_MANAGER_ACTIONS = [
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
]


def session_manager_statement() -> iam.PolicyStatement:
    return iam.PolicyStatement(
        sid="SessionManagerAgent",
        actions=list(SESSION_MANAGER_ACTIONS),
        resources=["*"],
    )
