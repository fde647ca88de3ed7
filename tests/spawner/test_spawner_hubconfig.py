"""The hub config is a pure function of the settings document: compared to a literal Config."""

import pytest
from ec2spawner import health
from ec2spawner.hubconfig import apply_settings
from ec2spawner.lease import LeaseHealthHandler
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
    c = apply_settings(Config(), settings(), hub_connect_ip="10.0.0.5", python="/py")
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
    c = apply_settings(Config(), settings(), hub_connect_ip="10.0.0.5", python="/py",
                       admin_password_file="/var/lib/ec2hub/admin_password")
    assert c.NativeAuthenticator.admin_password_file == "/var/lib/ec2hub/admin_password"


def test_github_oauth():
    s = settings(type="github", admin_users=["octo"], oauth_client_id="cid",
                 oauth_callback_url="https://hub/hub/oauth_callback", allowed_organizations=["org"])
    c = apply_settings(Config(), s, hub_connect_ip="10.0.0.5", oauth_client_secret="sec", python="/py")
    expected = expected_common()
    expected.Authenticator.admin_users = {"octo"}
    expected.JupyterHub.authenticator_class = "oauthenticator.github.GitHubOAuthenticator"
    expected.GitHubOAuthenticator.client_id = "cid"
    expected.GitHubOAuthenticator.oauth_callback_url = "https://hub/hub/oauth_callback"
    expected.GitHubOAuthenticator.client_secret = "sec"
    expected.GitHubOAuthenticator.allow_existing_users = True
    expected.GitHubOAuthenticator.allowed_organizations = {"org"}
    assert c == expected


def test_generic_oauth():
    s = settings(type="generic-oauth", oauth_client_id="cid", oauth_callback_url="cb",
                 oauth_authorize_url="https://idp/auth", oauth_token_url="https://idp/token",
                 oauth_userdata_url="https://idp/me")
    c = apply_settings(Config(), s, hub_connect_ip="10.0.0.5", python="/py")
    expected = expected_common()
    expected.Authenticator.admin_users = set()
    expected.JupyterHub.authenticator_class = "oauthenticator.generic.GenericOAuthenticator"
    g = expected.GenericOAuthenticator
    g.client_id, g.oauth_callback_url, g.allow_existing_users = "cid", "cb", True
    g.authorize_url, g.token_url, g.userdata_url = "https://idp/auth", "https://idp/token", "https://idp/me"
    assert c == expected


def test_dummy_only_when_asked():
    c = apply_settings(Config(), settings(type="dummy"), hub_connect_ip="10.0.0.5", python="/py")
    assert c.JupyterHub.authenticator_class == "dummy" and c.Authenticator.allow_all is True
    assert apply_settings(Config(), settings(), hub_connect_ip="x").JupyterHub.authenticator_class != "dummy"


@pytest.mark.parametrize("trait", ["region", "hub_id", "classes", "subnets", "secret_prefix"])
def test_spawner_accepts_the_config(trait):
    from ec2spawner.spawner import EC2Spawner

    c = apply_settings(Config(), settings(), hub_connect_ip="10.0.0.5")
    spawner = EC2Spawner(config=c)
    assert getattr(spawner, trait) == c.EC2Spawner[trait]
