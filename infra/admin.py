"""The hub's first admin account: its password, generated at deploy time into Secrets Manager.

With native sign-in nobody can sign up under an admin's name (ec2spawner.nativeauth); the hub
creates the ``admin_user`` account at its first start from this password instead, so there is no
race for the account. The operator reads it once with the ``AdminPasswordCommand`` output and
changes it in the hub (``/hub/change-password``); the secret is the initial password only, so
rotating it would not change the account's. Who may read it (the hub role) is wired in the Stack.
"""

from __future__ import annotations

from aws_cdk import Aws, Fn, RemovalPolicy
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

# Hub tag naming the secret (read by the hub bootstrap through IMDS, as the other hub tags).
TAG_ADMIN_PASSWORD_SECRET = "ec2hub:admin-password-secret"
ADMIN_PASSWORD_LENGTH = 32


def admin_password_secret_name(hub_id: str) -> str:
    """The secret's name, ``ec2hub/<hub_id>/admin-password-<stack uuid>``, as a deploy-time token.

    The hub tag, the policy and the outputs use the name instead of a Ref, so that nothing else in
    the template depends on the secret resource: an emulator whose CloudFormation cannot create
    Secrets Manager secrets (moto's) still deploys the rest, and the local sandbox can put a
    secret of that name there itself (the ``AdminPasswordSecretName`` output). The stack's UUID
    makes each deployment's name new: a deleted secret keeps its name for its 30-day recovery
    window, which would otherwise block deploying the same hub id again.
    """
    stack_uuid = Fn.select(2, Fn.split("/", Aws.STACK_ID))
    return f"ec2hub/{hub_id}/admin-password-{stack_uuid}"


class AdminAccount(Construct):
    """A Secrets Manager secret holding a generated password for ``admin_user``."""

    def __init__(
        self, scope: Construct, construct_id: str, *, hub_id: str, admin_user: str
    ) -> None:
        super().__init__(scope, construct_id)
        self.secret_name = admin_password_secret_name(hub_id)
        self.secret = secretsmanager.Secret(
            self,
            "Password",
            secret_name=self.secret_name,
            description=f"ec2hub {hub_id}: initial password of the hub admin {admin_user}",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=ADMIN_PASSWORD_LENGTH,
                # Letters and digits only: pasted into a login form or a shell without quoting.
                exclude_punctuation=True,
            ),
            # Deleting the stack deletes the hub (and its account database) too.
            removal_policy=RemovalPolicy.DESTROY,
        )
