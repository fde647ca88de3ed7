"""Identity providers as configuration: the client secret's home, Cognito, the settings the hub gets.

moto's CloudFormation creates neither Cognito nor Secrets Manager resources, and the sandbox deploys
with native sign-in: these are checked on the synthesized template (the OpenID Connect flow itself
runs for real in tests/spawner/test_oidc_signin.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match
from ec2spawner.settings import AuthSettings
from infra_testing import (
    CERT,
    as_list,
    join_text,
    policy_statements,
    synth,
)

from infra import ConfigError
from infra.config import config_from_context

OIDC = {
    "auth": "oidc", "oauth_client_id": "hub-client", "oidc_authorize_url": "https://idp.example.org/auth",
    "oidc_token_url": "https://idp.example.org/token", "oidc_userinfo_url": "https://idp.example.org/me",
    "oauth_allowed_groups": "staff,gpu-users", "oauth_admin_groups": "hub-admins", "oidc_scopes": "openid groups",
}


GOOGLE = {
    "auth": "google", "oauth_client_id": "hub-client.apps.example", "google_domains": "example.org",
    "google_groups_admin": "gadmin", "oauth_allowed_groups": "staff,gpu-users", "oauth_admin_groups": "hub-admins",
}


@pytest.fixture(scope="module")
def oidc_synth(tmp_path_factory):
    return synth(tmp_path_factory, OIDC)


@pytest.fixture(scope="module")
def google_synth(tmp_path_factory):
    return synth(tmp_path_factory, GOOGLE)


def resolve(value: Any, template: dict[str, Any]) -> str:
    """A deploy-time string as CloudFormation would make it, with each reference as {logical id}."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(resolve(p, template) for p in parts)
    if "Ref" in value:
        return "{" + value["Ref"] + "}"
    if "Fn::GetAtt" in value:
        return "{" + ".".join(value["Fn::GetAtt"]) + "}"
    if "Fn::Select" in value:
        return "{stack-uuid}"
    raise AssertionError(f"unexpected token {value!r}")


def logical_id(synth, resource_type: str) -> str:
    (found,) = synth.resources(resource_type)
    return found


def hub_auth(synth) -> AuthSettings:
    """The settings document's sign-in part, as the hub reads it."""
    (parameter,) = synth.resources("AWS::SSM::Parameter").values()
    return AuthSettings.model_validate(json.loads(resolve(parameter["Properties"]["Value"], synth.template))["auth"])


def hub_role(synth) -> str:
    (role,) = [k for k, v in synth.resources("AWS::IAM::Role").items()
               if "launches and manages" in v["Properties"].get("Description", "")]
    return role


def test_cognito_user_pool_domain_and_app_client(cognito_synth):
    t = cognito_synth.assertions
    t.has_resource_properties("AWS::Cognito::UserPool", Match.object_like({
        "AdminCreateUserConfig": {"AllowAdminCreateUserOnly": True},
        "MfaConfiguration": "ON",
        "Policies": {"PasswordPolicy": Match.object_like({"MinimumLength": 12})},
        "UserPoolAddOns": {"AdvancedSecurityMode": "ENFORCED"},
    }))
    pool = logical_id(cognito_synth, "AWS::Cognito::UserPool")
    t.has_resource_properties("AWS::Cognito::UserPoolDomain",
                              {"Domain": "ec2hub-lab-111111111111", "UserPoolId": {"Ref": pool}})
    t.has_resource_properties("AWS::Cognito::UserPoolClient", Match.object_like({
        "UserPoolId": {"Ref": pool},
        "GenerateSecret": True,
        "AllowedOAuthFlows": ["code"],
        "AllowedOAuthFlowsUserPoolClient": True,
        "AllowedOAuthScopes": ["openid", "email", "profile"],
        "CallbackURLs": ["https://hub.example.org/hub/oauth_callback"],
        "SupportedIdentityProviders": ["COGNITO"],
    }))


def test_cognito_has_a_group_for_each_class_group_and_the_admin_group(cognito_synth):
    groups = {v["Properties"]["GroupName"] for v in cognito_synth.resources("AWS::Cognito::UserPoolGroup").values()}
    assert groups == {"gpu-users", "hub-admins"}  # FULL_CATALOG's spot-gpu class allows gpu-users


def test_cognito_settings_read_groups_from_the_id_token(cognito_synth):
    auth = hub_auth(cognito_synth)
    client = logical_id(cognito_synth, "AWS::Cognito::UserPoolClient")
    domain = logical_id(cognito_synth, "AWS::Cognito::UserPoolDomain")
    assert auth.type == "cognito"
    assert auth.oauth_client_id == "{" + client + "}"
    assert auth.oauth_callback_url == "https://hub.example.org/hub/oauth_callback"
    assert auth.oauth_token_url == f"https://{{{domain}}}.auth.us-east-1.amazoncognito.com/oauth2/token"
    assert auth.oauth_authorize_url == f"https://{{{domain}}}.auth.us-east-1.amazoncognito.com/oauth2/authorize"
    assert (auth.groups_claim, auth.username_claim, auth.allow_all) == ("cognito:groups", "cognito:username", True)
    assert auth.admin_groups == ["hub-admins"] and auth.admin_users == ["admin"]
    assert auth.oauth_client_secret_name == "ec2hub/lab/oauth-client-secret-{stack-uuid}"


@pytest.mark.parametrize("name", ["oidc", "cognito"])
def test_the_client_secret_is_in_secrets_manager_and_only_the_hub_reads_it(request, name):
    s = request.getfixturevalue(f"{name}_synth")
    hub_id = s.context.get("hub_id", "ec2hub")
    # Besides the hub state's own secrets (the database's, the cookie secret, the proxy token).
    (secret,) = [r for r in s.resources("AWS::SecretsManager::Secret").values()
                 if "oauth-client-secret" in join_text(r["Properties"]["Name"])]
    props = secret["Properties"]
    assert join_text(props["Name"]) == f"ec2hub/{hub_id}/oauth-client-secret-{{stack-uuid}}"
    # A recognizable placeholder, never a value anyone could mistake for the real secret.
    assert props["GenerateSecretString"]["SecretStringTemplate"] == (
        '{"ec2hub-placeholder": "replace with the provider\'s client secret"}')
    statement = policy_statements(s, hub_role(s))["ReadOAuthClientSecret"]
    assert as_list(statement["Action"]) == ["secretsmanager:GetSecretValue"]
    assert [join_text(r) for r in as_list(statement["Resource"])] == [
        f"arn:aws:secretsmanager:us-east-1:111111111111:secret:ec2hub/{hub_id}/oauth-client-secret-{{stack-uuid}}-??????"]
    # Nobody else is granted any Secrets Manager action inline; the hub's managed policy reads only
    # the state's secrets (tests/infra/test_infra_state.py), not this one.
    readers = [st for p in s.resources("AWS::IAM::Policy").values() for st in p["Properties"]["PolicyDocument"]["Statement"]
               if any(str(a).startswith("secretsmanager:") for a in as_list(st["Action"]))]
    assert readers == [statement]
    managed = [join_text(r) for p in s.resources("AWS::IAM::ManagedPolicy").values()
               for st in p["Properties"]["PolicyDocument"]["Statement"] for r in as_list(st["Resource"])]
    assert managed and not [r for r in managed if "oauth-client-secret" in r]
    # With an identity provider there is no generated admin password.
    assert "AdminPasswordSecretName" not in s.template["Outputs"]
    assert not [r for r in managed if "admin-password" in r]


def test_the_deploy_output_says_where_to_put_the_secret(oidc_synth, cognito_synth):
    outputs = oidc_synth.template["Outputs"]
    assert resolve(outputs["OAuthCallbackUrl"]["Value"], oidc_synth.template).endswith("/hub/oauth_callback")
    assert resolve(outputs["OAuthClientSecretCommand"]["Value"], oidc_synth.template) == (
        "aws secretsmanager put-secret-value --region us-east-1 --secret-id "
        "ec2hub/ec2hub/oauth-client-secret-{stack-uuid} --secret-string '<the client secret of oidc OAuth app hub-client>'")
    command = resolve(cognito_synth.template["Outputs"]["OAuthClientSecretCommand"]["Value"], cognito_synth.template)
    pool = logical_id(cognito_synth, "AWS::Cognito::UserPool")
    client = logical_id(cognito_synth, "AWS::Cognito::UserPoolClient")
    assert command == (
        "aws secretsmanager put-secret-value --region us-east-1 --secret-id "
        "ec2hub/lab/oauth-client-secret-{stack-uuid} --secret-string \"$(aws cognito-idp "
        f"describe-user-pool-client --region us-east-1 --user-pool-id {{{pool}}} --client-id {{{client}}} "
        "--query UserPoolClient.ClientSecret --output text)\"")


def test_oidc_settings_carry_the_endpoints_claims_and_groups(oidc_synth):
    auth = hub_auth(oidc_synth)
    assert auth.type == "oidc" and auth.oauth_client_id == "hub-client"
    assert (auth.oauth_authorize_url, auth.oauth_token_url, auth.oauth_userdata_url) == (
        "https://idp.example.org/auth", "https://idp.example.org/token", "https://idp.example.org/me")
    assert auth.scopes == ["openid", "groups"] and auth.groups_claim == "groups"
    assert auth.username_claim == "preferred_username"
    assert auth.allowed_groups == ["staff", "gpu-users"] and auth.admin_groups == ["hub-admins"]
    assert auth.allow_all is False
    assert auth.oauth_callback_url == "http://{HubLoadBalancerB1A057FF.DNSName}/hub/oauth_callback"
    assert not oidc_synth.resources("AWS::Cognito::UserPool")


@pytest.mark.parametrize("name", ["oidc", "cognito"])
def test_cdk_nag_finds_nothing_unacknowledged(request, name):
    # checkov runs over the Cognito stack in test_infra_linters.py.
    report = request.getfixturevalue(f"{name}_synth").aws_solutions_report()
    assert (report["conclusion"], report["violations"]) == ("success", [])


def test_native_sign_in_has_no_client_secret(default_synth):
    names = [join_text(v["Properties"]["Name"]) for v in default_synth.resources("AWS::SecretsManager::Secret").values()]
    assert names and not [n for n in names if "oauth-client-secret" in n]
    assert "OAuthClientSecretName" not in default_synth.template["Outputs"]
    assert hub_auth(default_synth).type == "native"


REQUIRED = {"admin_user": "admin", "allow_http": True}


@pytest.mark.parametrize(("context", "message"), [
    ({"auth": "saml"}, "context auth: 'saml' is not one of native, github, google, oidc, cognito"),
    ({"auth": "github"}, ("context oauth_client_id: required with auth=github: the client id of the OAuth app "
     "registered with the provider (its secret goes into Secrets Manager after deploy)")),
    ({"auth": "github", "oauth_client_id": "c"}, ("context github_organizations: required with auth=github: say who "
     "may sign in (github_organizations or oauth_allowed_groups), or -c oauth_allow_all=true for everyone the "
     "provider signs in")),
    ({**OIDC, "oidc_token_url": None}, ("context oidc_token_url: required with auth=oidc: the provider's endpoint "
     "(its /.well-known/openid-configuration lists them)")),
    ({**OIDC, "oidc_token_url": "http://idp/token"}, "context oidc_token_url: 'http://idp/token' is not an https:// URL"),
    ({"auth": "google", "oauth_client_id": "c", "google_domains": "example.org", "oauth_admin_groups": "a"},
     ("context oauth_allowed_groups: Google's tokens carry no groups: set google_groups_admin (a Workspace "
     "administrator whose rights a service account reads groups with), or use google_domains, oauth_allow_all or "
     "admin_user (groups are managed in the hub)")),
    ({"auth": "google", "oauth_client_id": "c", "google_groups_admin": "gadmin", "oauth_allow_all": True},
     ("context google_domains: required with google_groups_admin: the Google Workspace domains whose users sign in "
     "and whose groups are read")),
    ({**OIDC, "google_groups_admin": "gadmin"},
     "context google_groups_admin: only with auth=google (other providers' groups come in their tokens)"),
    ({**GOOGLE, "google_groups_admin": "g admin"}, "context google_groups_admin: 'g admin' is not a plain user name"),
    ({"auth": "cognito"}, ("context certificate_arn: required with auth=cognito: Cognito sends users back only to "
     "an https:// callback URL (-c certificate_arn=arn:aws:acm:...)")),
    ({"auth": "cognito", "certificate_arn": CERT, "cognito_domain_prefix": "my-cognito-hub"},
     ("context cognito_domain_prefix: 'my-cognito-hub' is not a Cognito domain prefix (lowercase letters, digits, "
     "hyphens; no aws, amazon or cognito)")),
])
def test_a_provider_missing_what_it_needs_is_refused_in_one_line(context, message):
    with pytest.raises(ConfigError) as refused:
        config_from_context({**REQUIRED, **{k: v for k, v in context.items() if v is not None}})
    assert str(refused.value) == message


def test_lists_come_as_json_lists_or_separated_text():
    a = config_from_context({**REQUIRED, **OIDC, "oauth_allowed_groups": ["staff", "gpu-users"]})
    b = config_from_context({**REQUIRED, **OIDC, "oauth_allowed_groups": "staff gpu-users"})
    assert a.oauth_allowed_groups == b.oauth_allowed_groups == ("staff", "gpu-users")
    assert config_from_context(REQUIRED).auth == "native"


def test_google_groups_read_with_a_service_account_key_only_the_hub_reads(google_synth):
    s = google_synth
    auth = hub_auth(s)
    assert (auth.type, auth.hosted_domains, auth.google_groups_admin) == ("google", ["example.org"], "gadmin")
    assert auth.allowed_groups == ["staff", "gpu-users"] and auth.admin_groups == ["hub-admins"]
    assert auth.google_service_account_secret_name == "ec2hub/ec2hub/google-service-account-{stack-uuid}"
    (secret,) = [r for r in s.resources("AWS::SecretsManager::Secret").values()
                 if "google-service-account" in join_text(r["Properties"]["Name"])]
    assert secret["Properties"]["GenerateSecretString"]["SecretStringTemplate"] == (
        '{"ec2hub-placeholder": "replace with the service account\'s JSON key"}')
    statement = policy_statements(s, hub_role(s))["ReadOAuthClientSecret"]
    assert [join_text(r) for r in as_list(statement["Resource"])] == [
        "arn:aws:secretsmanager:us-east-1:111111111111:secret:ec2hub/ec2hub/oauth-client-secret-{stack-uuid}-??????",
        "arn:aws:secretsmanager:us-east-1:111111111111:secret:ec2hub/ec2hub/google-service-account-{stack-uuid}-??????",
    ]
    assert resolve(s.template["Outputs"]["GoogleServiceAccountKeyCommand"]["Value"], s.template) == (
        "aws secretsmanager put-secret-value --region us-east-1 --secret-id "
        "ec2hub/ec2hub/google-service-account-{stack-uuid} --secret-string file://<the service account's JSON key>")
    assert s.aws_solutions_report()["violations"] == []


def test_google_without_groups_has_no_service_account_secret(tmp_path_factory):
    config = config_from_context({**REQUIRED, "auth": "google", "oauth_client_id": "c", "google_domains": "example.org"})
    assert config.google_groups_admin is None
    from infra.identity import auth_settings

    auth = AuthSettings.model_validate(auth_settings(config, callback="cb", secret_name="n"))
    assert auth.google_service_account_secret_name is None and auth.google_groups_admin is None
