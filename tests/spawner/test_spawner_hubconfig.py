"""The hub config is a pure function of the settings document: compared to a literal Config."""

import pytest
from ec2spawner import health
from ec2spawner.hubconfig import apply_settings
from ec2spawner.lease import LeaseHealthHandler
from ec2spawner.oauth import ClaimGroups, github_team_groups
from ec2spawner.settings import HubSettings
from traitlets.config import Config

CLASS = {"slug": "small", "display_name": "Small", "instance_types": ["t3.medium"], "ami": "ami-12345678",
         "default": True, "launch_template_id": "lt-0abc"}


def settings(**auth):
    return HubSettings.model_validate({
        "region": "eu-west-1", "hub_id": "hub1", "subnets": {"eu-west-1a": "subnet-a"},
        "classes": [CLASS], "secret_prefix": "/ec2hub/hub1/servers/", "efs_id": "fs-1",
        "idle_timeout_s": 1800, "auth": auth or {"type": "native", "admin_users": ["root"]},
    })


def expected_common() -> Config:
    c = Config()
    c.JupyterHub.spawner_class = "ec2"
    c.JupyterHub.hub_ip = "0.0.0.0"
    c.JupyterHub.hub_port = 8081
    c.JupyterHub.hub_connect_ip = "10.0.0.5"
    c.JupyterHub.port = 8000
    c.ConfigurableHTTPProxy.command = ["configurable-http-proxy", "--keep-alive-timeout=660000"]
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.template_vars = {"announcement_home": health.announcement, "announcement_spawn": health.announcement}
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = 0
    c.EC2Spawner.region = "eu-west-1"
    c.EC2Spawner.hub_id = "hub1"
    c.EC2Spawner.classes = [HubSettings.model_validate(settings().model_dump()).classes[0].model_dump()]
    c.EC2Spawner.subnets = {"eu-west-1a": "subnet-a"}
    c.EC2Spawner.secret_prefix = "/ec2hub/hub1/servers/"
    c.EC2Spawner.efs_id = "fs-1"
    c.EC2Spawner.notebook_port = 8888
    c.JupyterHub.extra_handlers = [("/ec2hub/health", LeaseHealthHandler, {"hub_id": "hub1", "lease_table": None})]
    # No jupyterhub-idle-culler service: the spawner's culler applies this to classes that set none.
    c.EC2Spawner.idle_timeout = 1800
    return c


def test_native_auth_with_admin_approval():
    c = apply_settings(Config(), settings(), hub_connect_ip="10.0.0.5")
    expected = expected_common()
    expected.Authenticator.admin_users = {"root"}
    expected.JupyterHub.authenticator_class = "ec2spawner.nativeauth.NativeAuthenticator"
    expected.NativeAuthenticator.enable_signup = True
    expected.NativeAuthenticator.open_signup = False
    expected.NativeAuthenticator.minimum_password_length = 12
    expected.NativeAuthenticator.check_common_password = True
    expected.NativeAuthenticator.allowed_failed_logins = 5
    expected.NativeAuthenticator.seconds_before_next_try = 60
    expected.NativeAuthenticator.lockout_max_seconds = 3600
    expected.Authenticator.allow_all = True
    assert c == expected


def test_native_auth_creates_the_admin_from_a_password_file():
    c = apply_settings(Config(), settings(), hub_connect_ip="10.0.0.5",
                       admin_password_file="/var/lib/ec2hub/admin_password")
    assert c.NativeAuthenticator.admin_password_file == "/var/lib/ec2hub/admin_password"


def test_github_oauth_with_teams_as_groups():
    s = settings(type="github", admin_users=["octo"], oauth_client_id="cid",
                 oauth_callback_url="https://hub/hub/oauth_callback", allowed_organizations=["org"],
                 oauth_client_secret_name="ec2hub/hub1/oauth-client-secret-x", admin_groups=["org:ops"])
    c = apply_settings(Config(), s, hub_connect_ip="10.0.0.5", oauth_client_secret="sec")
    expected = expected_common()
    expected.Authenticator.admin_users = {"octo"}
    expected.JupyterHub.authenticator_class = "ec2spawner.oauth.GitHubOAuthenticator"
    g = expected.GitHubOAuthenticator
    g.client_id = "cid"
    g.oauth_callback_url = "https://hub/hub/oauth_callback"
    g.client_secret = "sec"
    g.client_secret_source = "ec2hub/hub1/oauth-client-secret-x"
    g.allow_existing_users = True
    g.allowed_organizations = {"org"}
    g.scope = ["read:user", "read:org"]
    g.populate_teams_in_auth_state = True
    g.manage_groups = True
    g.auth_state_groups_key = github_team_groups
    g.admin_groups = {"org:ops"}
    assert c == expected


def test_github_teams_are_org_colon_slug_groups():
    teams = [{"slug": "gpu-users", "organization": {"login": "lab"}}, {"slug": "ops", "organization": {"login": "it"}}]
    assert github_team_groups({"teams": teams}) == ["lab:gpu-users", "it:ops"]
    assert github_team_groups({}) == []


def test_google_oauth_by_domain_without_groups():
    s = settings(type="google", oauth_client_id="cid", oauth_callback_url="cb", hosted_domains=["example.org"])
    c = apply_settings(Config(), s, hub_connect_ip="10.0.0.5")
    expected = expected_common()
    expected.Authenticator.admin_users = set()
    expected.JupyterHub.authenticator_class = "ec2spawner.oauth.GoogleOAuthenticator"
    g = expected.GoogleOAuthenticator
    g.client_id, g.oauth_callback_url, g.allow_existing_users = "cid", "cb", True
    g.hosted_domain = ["example.org"]
    # hosted_domain only blocks other domains: the domain's users are let in by allow_all.
    g.allow_all = True
    assert c == expected


def test_google_oauth_with_workspace_groups():
    s = settings(type="google", oauth_client_id="cid", oauth_callback_url="cb", hosted_domains=["a.org", "b.org"],
                 allowed_groups=["staff"], admin_groups=["hub-admins"], google_groups_admin="gadmin",
                 google_service_account_secret_name="ec2hub/hub1/google-service-account-1")
    c = apply_settings(Config(), s, hub_connect_ip="10.0.0.5", google_service_account_key_file="/k.json")
    expected = expected_common()
    expected.Authenticator.admin_users = set()
    expected.JupyterHub.authenticator_class = "ec2spawner.oauth.GoogleOAuthenticator"
    g = expected.GoogleOAuthenticator
    g.client_id, g.oauth_callback_url, g.allow_existing_users = "cid", "cb", True
    g.hosted_domain = ["a.org", "b.org"]
    g.read_google_groups = True
    g.gsuite_administrator = {"a.org": "gadmin", "b.org": "gadmin"}
    g.google_service_account_keys = {"a.org": "/k.json", "b.org": "/k.json"}
    g.manage_groups = True
    g.auth_state_groups_key = ClaimGroups("google_groups", user_key="google_user")
    g.allowed_groups, g.admin_groups = {"staff"}, {"hub-admins"}
    assert c == expected


def test_openid_connect_with_groups_from_a_claim():
    s = settings(type="oidc", admin_users=["root"], oauth_client_id="cid", oauth_callback_url="cb",
                 oauth_authorize_url="https://idp/auth", oauth_token_url="https://idp/token",
                 oauth_userdata_url="https://idp/me", groups_claim="https://idp/groups",
                 scopes=["openid", "groups"], allowed_groups=["staff"], admin_groups=["hub-admins"])
    c = apply_settings(Config(), s, hub_connect_ip="10.0.0.5")
    expected = expected_common()
    expected.Authenticator.admin_users = {"root"}
    expected.JupyterHub.authenticator_class = "ec2spawner.oauth.GenericOAuthenticator"
    g = expected.GenericOAuthenticator
    g.client_id, g.oauth_callback_url, g.allow_existing_users = "cid", "cb", True
    g.authorize_url, g.token_url, g.userdata_url = "https://idp/auth", "https://idp/token", "https://idp/me"
    g.login_service = "OpenID Connect"
    g.scope = ["openid", "groups"]
    g.username_claim = "preferred_username"
    g.manage_groups = True
    g.auth_state_groups_key = ClaimGroups("https://idp/groups")
    g.allowed_groups = {"staff"}
    g.admin_groups = {"hub-admins"}
    assert c == expected


def test_cognito_reads_groups_from_the_id_token():
    s = settings(type="cognito", oauth_client_id="cid", oauth_callback_url="cb", allow_all=True,
                 oauth_authorize_url="https://d.auth.eu-west-1.amazoncognito.com/oauth2/authorize",
                 oauth_token_url="https://d.auth.eu-west-1.amazoncognito.com/oauth2/token",
                 username_claim="cognito:username", groups_claim="cognito:groups", scopes=["openid", "email"])
    c = apply_settings(Config(), s, hub_connect_ip="10.0.0.5")
    g = c.GenericOAuthenticator
    assert c.JupyterHub.authenticator_class == "ec2spawner.oauth.GenericOAuthenticator"
    assert g.userdata_from_id_token is True and "userdata_url" not in g
    assert g.token_url == "https://d.auth.eu-west-1.amazoncognito.com/oauth2/token"
    assert g.auth_state_groups_key == ClaimGroups("cognito:groups") and g.manage_groups is True
    assert g.username_claim == "cognito:username" and g.allow_all is True


@pytest.mark.parametrize(("user", "groups"), [
    ({"cognito:groups": ["gpu", "staff"]}, ["gpu", "staff"]),
    ({"cognito:groups": "gpu"}, ["gpu"]),
    ({}, []),
])
def test_groups_claim_is_read_whatever_its_shape(user, groups):
    assert ClaimGroups("cognito:groups")({"oauth_user": user}) == groups


def test_the_oauth_config_loads_into_the_authenticators():
    """manage_groups must be set with the group options, or oauthenticator refuses the config."""
    from ec2spawner.oauth import GenericOAuthenticator, GitHubOAuthenticator

    c = apply_settings(Config(), settings(type="oidc", oauth_client_id="cid", oauth_client_secret_name="n",
                                          allowed_groups=["staff"], admin_groups=["a"]), hub_connect_ip="x")
    assert GenericOAuthenticator(config=c).admin_groups == {"a"}
    assert GenericOAuthenticator(config=c).client_secret_source == "n"
    c = apply_settings(Config(), settings(type="github", oauth_client_id="cid", admin_groups=["o:t"]),
                       hub_connect_ip="x")
    assert GitHubOAuthenticator(config=c).auth_state_groups_key is github_team_groups


def test_dummy_only_when_asked():
    c = apply_settings(Config(), settings(type="dummy"), hub_connect_ip="10.0.0.5")
    assert c.JupyterHub.authenticator_class == "dummy" and c.Authenticator.allow_all is True
    assert apply_settings(Config(), settings(), hub_connect_ip="x").JupyterHub.authenticator_class != "dummy"


@pytest.mark.parametrize("trait", ["region", "hub_id", "classes", "subnets", "secret_prefix"])
def test_spawner_accepts_the_config(trait):
    from ec2spawner.spawner import EC2Spawner

    c = apply_settings(Config(), settings(), hub_connect_ip="10.0.0.5")
    spawner = EC2Spawner(config=c)
    assert getattr(spawner, trait) == c.EC2Spawner[trait]


def test_servers_are_told_the_hub_apis_stable_name_and_the_proxy_keeps_the_hosts_address():
    document = {**settings().model_dump(), "hub_dns_zone_id": "Z0123ABC", "hub_dns_name": "hub.ec2hub.internal"}
    c = apply_settings(Config(), HubSettings.model_validate(document), hub_connect_ip="10.0.0.5")
    expected = apply_settings(Config(), settings(), hub_connect_ip="10.0.0.5")
    expected.EC2Spawner.hub_connect_url = "http://hub.ec2hub.internal:8081"
    assert c == expected
    assert c.JupyterHub.hub_connect_ip == "10.0.0.5" and "hub_connect_url" not in c.JupyterHub


def test_the_server_env_names_the_hub_api_by_its_stable_name():
    from unittest import mock

    from ec2spawner.spawner import EC2Spawner
    from jupyterhub.objects import Hub

    document = {**settings().model_dump(), "hub_dns_zone_id": "Z0123ABC", "hub_dns_name": "hub.ec2hub.internal"}
    c = apply_settings(Config(), HubSettings.model_validate(document), hub_connect_ip="10.0.0.5")
    spawner = EC2Spawner(config=c, hub=Hub(ip="0.0.0.0", connect_ip="10.0.0.5", port=8081, base_url="/hub/"),
                         user=mock.Mock(name="user", escaped_name="ada", url="/user/ada/"))
    spawner.user.name = "ada"
    env = super(EC2Spawner, spawner).get_env()  # JupyterHub's own: what the spawner's adds to
    assert env["JUPYTERHUB_API_URL"] == "http://hub.ec2hub.internal:8081/hub/api"
    assert env["JUPYTERHUB_ACTIVITY_URL"] == "http://hub.ec2hub.internal:8081/hub/api/users/ada/activity"


@pytest.mark.parametrize("dns", [{"hub_dns_zone_id": "Z0123ABC"}, {"hub_dns_name": "hub.ec2hub.internal"}])
def test_the_hub_apis_name_and_its_zone_come_together(dns):
    with pytest.raises(ValueError, match="hub_dns_zone_id and hub_dns_name go together"):
        HubSettings.model_validate({**settings().model_dump(), **dns})


def test_spend_ledger_and_budgets_reach_the_spawner():
    document = {**settings().model_dump(), "spend_table": "hub1-SpendTable-X",
                "group_budgets_usd": {"gpu": 500}, "budget_exempt_admins": True}
    c = apply_settings(Config(), HubSettings.model_validate(document), hub_connect_ip="10.0.0.5")
    assert (c.EC2Spawner.spend_table, c.EC2Spawner.group_budgets_usd, c.EC2Spawner.budget_exempt_admins) == (
        "hub1-SpendTable-X", {"gpu": 500.0}, True)
    # Without a ledger nothing about spend is set: no budgets can be enforced.
    plain = apply_settings(Config(), settings(), hub_connect_ip="10.0.0.5")
    assert {"spend_table", "group_budgets_usd", "budget_exempt_admins"}.isdisjoint(plain.EC2Spawner)
