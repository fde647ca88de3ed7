"""Sign-in through an identity provider: the client secret's home and, optionally, a Cognito user pool.

With ``auth`` = github, google, oidc or cognito the hub signs users in through oauthenticator
(ec2spawner.oauth). This construct makes what the deployment needs beyond the hub's settings:

- **The client secret** is a Secrets Manager secret named ``ec2hub/<hub_id>/oauth-client-secret-<stack
  uuid>``. The stack creates it holding a placeholder (``ec2spawner.settings.OAUTH_SECRET_PLACEHOLDER_KEY``); the operator puts
  the provider's client secret in it (the ``OAuthClientSecretCommand`` output). The hub bootstrap
  fetches it at every start of the hub and refuses to start while it still holds the
  placeholder, so the real value is picked up at the hub's next start. Only the hub role may read
  it (the Stack grants that); it is never in the user data, the settings or a log. Other parts
  refer to it by name, as to the admin password (infra.admin), so an emulator whose
  CloudFormation cannot create secrets still deploys the rest.
- **The Google service account's key** (``auth=google`` with ``google_groups_admin``), the same
  way: ``ec2hub/<hub_id>/google-service-account-<stack uuid>``, a placeholder until the operator
  puts the JSON key there (``GoogleServiceAccountKeyCommand``), fetched at every start.
- **Cognito** (``auth=cognito``): a user pool (no self sign-up: the operator adds users), its
  hosted domain, one group per group the deployment names (the catalog's ``allowed_groups`` and
  ``oauth_admin_groups``; Cognito puts a user's groups in the ID token's ``cognito:groups``), and
  an app client with a generated secret, the authorization-code flow and the hub's callback URL.

:func:`auth_settings` is pure: it builds the settings document's ``auth`` mapping
(ec2spawner.settings.AuthSettings) from the config and the values the stack resolved.
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Aws, Duration, Fn, RemovalPolicy
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct
from ec2spawner.settings import OAUTH_SECRET_PLACEHOLDER_KEY

from .config import HubConfig

COGNITO_SCOPES = ["openid", "email", "profile"]
COGNITO_GROUPS_CLAIM = "cognito:groups"
COGNITO_USERNAME_CLAIM = "cognito:username"


def client_secret_name(hub_id: str) -> str:
    """``ec2hub/<hub_id>/oauth-client-secret-<stack uuid>`` (a new name per deployment: a deleted
    secret keeps its name for its recovery window)."""
    stack_uuid = Fn.select(2, Fn.split("/", Aws.STACK_ID))
    return f"ec2hub/{hub_id}/oauth-client-secret-{stack_uuid}"


def google_key_secret_name(hub_id: str) -> str:
    """``ec2hub/<hub_id>/google-service-account-<stack uuid>``: the Google service account's JSON key."""
    stack_uuid = Fn.select(2, Fn.split("/", Aws.STACK_ID))
    return f"ec2hub/{hub_id}/google-service-account-{stack_uuid}"


def callback_url(hub_url: str) -> str:
    """Where the provider sends the user back: register this with the provider."""
    return f"{hub_url.rstrip('/')}/hub/oauth_callback"


def auth_settings(
    config: HubConfig,
    *,
    callback: str,
    secret_name: str | None,
    google_key_secret_name: str | None = None,
    cognito_client_id: str | None = None,
    cognito_base_url: str | None = None,
) -> dict[str, Any]:
    """The settings document's ``auth`` mapping for ``config.auth``."""
    auth: dict[str, Any] = {"type": config.auth, "admin_users": [config.admin_user] if config.admin_user else []}
    if not config.oauth:
        return auth
    auth.update({
        "oauth_client_id": cognito_client_id if config.auth == "cognito" else config.oauth_client_id,
        "oauth_callback_url": callback,
        "oauth_client_secret_name": secret_name,
    })
    if config.oauth_admin_groups:
        auth["admin_groups"] = list(config.oauth_admin_groups)
    if config.oauth_allowed_groups:
        auth["allowed_groups"] = list(config.oauth_allowed_groups)
    if config.oauth_allow_all:
        auth["allow_all"] = True
    if config.auth == "github" and config.github_organizations:
        auth["allowed_organizations"] = list(config.github_organizations)
    if config.auth == "google" and config.google_domains:
        auth["hosted_domains"] = list(config.google_domains)
    if config.auth == "google" and config.google_groups_admin:
        auth["google_groups_admin"] = config.google_groups_admin
        auth["google_service_account_secret_name"] = google_key_secret_name
    if config.auth == "oidc":
        auth.update({
            "oauth_authorize_url": config.oidc_authorize_url,
            "oauth_token_url": config.oidc_token_url,
            "oauth_userdata_url": config.oidc_userinfo_url,
            "scopes": list(config.oidc_scopes),
            "username_claim": config.oidc_username_claim,
            "groups_claim": config.oauth_groups_claim,
        })
    if config.auth == "cognito":
        auth.update({
            "oauth_authorize_url": f"{cognito_base_url}/oauth2/authorize",
            "oauth_token_url": f"{cognito_base_url}/oauth2/token",
            "scopes": list(COGNITO_SCOPES),
            "username_claim": COGNITO_USERNAME_CLAIM,
            "groups_claim": COGNITO_GROUPS_CLAIM,
            # Everyone in the stack's own pool: the operator adds its users.
            "allow_all": True,
        })
    return auth


class IdentityProvider(Construct):
    """The OAuth client secret's home, and with ``auth=cognito`` the user pool and its app client."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: HubConfig,
        callback: str,
        groups: list[str],
    ) -> None:
        super().__init__(scope, construct_id)
        self.secret_name = client_secret_name(config.hub_id)
        self.secret = self._operator_secret(
            "ClientSecret", self.secret_name, "the provider's client secret",
            f"ec2hub {config.hub_id}: the {config.auth} OAuth client secret (put it here as plain text; the hub "
            "reads it at every start)",
        )
        # Google Workspace groups: the service account's key, put there by the operator.
        self.google_key_secret_name: str | None = None
        if config.auth == "google" and config.google_groups_admin:
            self.google_key_secret_name = google_key_secret_name(config.hub_id)
            self.google_key_secret = self._operator_secret(
                "GoogleServiceAccountKey", self.google_key_secret_name, "the service account's JSON key",
                f"ec2hub {config.hub_id}: the JSON key of the Google service account that reads Google Workspace "
                "groups (domain-wide delegation, scope admin.directory.group.readonly)",
            )
        self.user_pool: cognito.UserPool | None = None
        self.client: cognito.UserPoolClient | None = None
        self.domain: cognito.UserPoolDomain | None = None
        if config.auth == "cognito":
            self._cognito(config, callback, groups)

    def _operator_secret(self, construct_id: str, name: str, what: str, description: str) -> secretsmanager.Secret:
        """A secret the operator fills after deploy. It holds a placeholder the hub recognizes (it
        refuses to start on it), never a usable value."""
        return secretsmanager.Secret(
            self,
            construct_id,
            secret_name=name,
            description=description,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps({OAUTH_SECRET_PLACEHOLDER_KEY: f"replace with {what}"}),
                generate_string_key="unused",
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )

    def _cognito(self, config: HubConfig, callback: str, groups: list[str]) -> None:
        self.user_pool = cognito.UserPool(
            self,
            "UserPool",
            user_pool_name=f"ec2hub-{config.hub_id}",
            # The operator adds users (aws cognito-idp admin-create-user): nobody signs up alone.
            self_sign_up_enabled=False,
            sign_in_aliases=cognito.SignInAliases(username=True, email=True),
            sign_in_case_sensitive=False,
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            password_policy=cognito.PasswordPolicy(
                min_length=12, require_digits=True, require_lowercase=True, require_uppercase=True,
                require_symbols=True, temp_password_validity=Duration.days(3),
            ),
            # Every user sets up an authenticator app at the first sign-in (the hosted UI asks).
            mfa=cognito.Mfa.REQUIRED,
            mfa_second_factor=cognito.MfaSecondFactor(sms=False, otp=True),
            feature_plan=cognito.FeaturePlan.PLUS,
            standard_threat_protection_mode=cognito.StandardThreatProtectionMode.FULL_FUNCTION,
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        prefix = config.cognito_domain_prefix or f"ec2hub-{config.hub_id.lower()}-{config.account}"
        self.domain = self.user_pool.add_domain(
            "Domain", cognito_domain=cognito.CognitoDomainOptions(domain_prefix=prefix)
        )
        self.client = self.user_pool.add_client(
            "HubClient",
            user_pool_client_name=f"ec2hub-{config.hub_id}-hub",
            generate_secret=True,
            o_auth=cognito.OAuthSettings(
                flows=cognito.OAuthFlows(authorization_code_grant=True),
                scopes=[cognito.OAuthScope.OPENID, cognito.OAuthScope.EMAIL, cognito.OAuthScope.PROFILE],
                callback_urls=[callback],
            ),
            supported_identity_providers=[cognito.UserPoolClientIdentityProvider.COGNITO],
            prevent_user_existence_errors=True,
            id_token_validity=Duration.hours(1),
            access_token_validity=Duration.hours(1),
        )
        # One pool group per group the deployment names: Cognito lists a user's groups in the ID
        # token's cognito:groups claim, which the hub turns into JupyterHub groups.
        for name in groups:
            cognito.CfnUserPoolGroup(
                self,
                f"Group{''.join(ch for ch in name.title() if ch.isalnum())}",
                user_pool_id=self.user_pool.user_pool_id,
                group_name=name,
                description=f"ec2hub {config.hub_id}: JupyterHub group {name}",
            )
