"""The hub's configuration as a pure function of the hub settings document.

``bootstrap/hub/jupyterhub_config.py`` stays thin::

    from ec2spawner.hubconfig import apply_settings
    from ec2spawner.settings import HubSettings
    apply_settings(c, HubSettings.load("/etc/ec2hub/settings.json"), hub_connect_ip=<private ip>)

Everything here is a plain assignment on a ``traitlets.config.Config``, so tests compare the result
to a literal Config.
"""

from __future__ import annotations

from traitlets.config import Config

from . import health
from .lease import LeaseHealthHandler
from .oauth import ClaimGroups, github_team_groups
from .settings import AuthSettings, HubSettings
from .spawner import start_sweeper_with_hub

# The load balancer's health check (infra/hub.py): 200 only from the hub that holds the lease.
HEALTH_PATH = "/ec2hub/health"  # under the hub prefix: /hub/ec2hub/health

# Native sign-in on a public hub: passwords of at least 12 characters and not on NativeAuthenticator's
# list of 10,000 common ones; after 5 failed logins a name waits 60 s, doubling with each further
# failure up to an hour (ec2spawner.nativeauth).
# The load balancer in front of the proxy drops a connection idle this long (infra/hub.py sets it).
# The proxy must keep idle client connections open longer: if it closed first, the load balancer
# could send a request on a connection the proxy is just closing and answer 502 (ELB user guide,
# "Connection idle timeout": the target's keep-alive timeout should exceed the load balancer's).
# configurable-http-proxy closes them after 5 s unless told otherwise.
LOAD_BALANCER_IDLE_TIMEOUT_S = 600
PROXY_KEEP_ALIVE_TIMEOUT_S = LOAD_BALANCER_IDLE_TIMEOUT_S + 60

MINIMUM_PASSWORD_LENGTH = 12
ALLOWED_FAILED_LOGINS = 5
LOCKOUT_SECONDS = 60
LOCKOUT_MAX_SECONDS = 3600


def apply_settings(
    c: Config,
    settings: HubSettings,
    *,
    hub_connect_ip: str,
    hub_ip: str = "0.0.0.0",
    oauth_client_secret: str | None = None,
    admin_password_file: str | None = None,
    google_service_account_key_file: str | None = None,
    proxy_command: str = "configurable-http-proxy",
) -> Config:
    """Set the hub, spawner and authenticator config from ``settings``; return ``c``.

    ``hub_connect_ip`` is the hub host's private IP: the proxy on the same host reaches the hub
    there. Notebook servers are told the hub API's stable name instead when the settings have one
    (``hub_dns_name``, the record the hub bootstrap points at this host at every start), as
    ``EC2Spawner.hub_connect_url``, which JupyterHub puts in a server's ``JUPYTERHUB_API_URL`` and
    ``JUPYTERHUB_ACTIVITY_URL`` only: a replaced hub host keeps the name, not the IP.
    ``oauth_client_secret`` is read by the caller (the hub bootstrap fetches the Secrets Manager
    secret ``settings.auth.oauth_client_secret_name`` at every start), so no AWS call happens here. ``admin_password_file`` (native sign-in only)
    holds the first admin's password, from which the hub creates that account at start; nobody can
    sign up under an admin's name. ``google_service_account_key_file`` (google with
    ``google_groups_admin``) is the service account's JSON key, also fetched at every start; without
    it no groups are read from Google. ``proxy_command`` is the
    configurable-http-proxy executable (found on PATH by default).
    """
    c.JupyterHub.spawner_class = "ec2"
    c.JupyterHub.hub_ip = hub_ip
    c.JupyterHub.hub_port = settings.hub_api_port
    c.JupyterHub.hub_connect_ip = hub_connect_ip
    c.JupyterHub.port = settings.proxy_port
    c.ConfigurableHTTPProxy.command = proxy_args(proxy_command)
    # Notebooks run on their own instances and survive a hub restart; the hub re-attaches to them.
    c.JupyterHub.cleanup_servers = False
    # Why the hub ended a server that stopped answering, on the home and spawn pages.
    c.JupyterHub.template_vars = {"announcement_home": health.announcement, "announcement_spawn": health.announcement}
    c.JupyterHub.allow_named_servers = settings.allow_named_servers
    c.JupyterHub.named_server_limit_per_user = settings.named_server_limit_per_user

    c.EC2Spawner.region = settings.region
    c.EC2Spawner.hub_id = settings.hub_id
    c.EC2Spawner.classes = [cls.model_dump() for cls in settings.classes]
    c.EC2Spawner.subnets = dict(settings.subnets)
    c.EC2Spawner.secret_prefix = settings.secret_prefix
    if settings.targets:
        c.EC2Spawner.targets = {name: target.model_dump() for name, target in settings.targets.items()}
    c.EC2Spawner.efs_id = settings.efs_id
    c.EC2Spawner.notebook_port = settings.notebook_port
    if settings.hub_dns_name:
        # Spawner's, not JupyterHub.hub_connect_url: that one would also send the proxy's hub route
        # through DNS, so the hub's own start would wait on its record.
        c.EC2Spawner.hub_connect_url = f"http://{settings.hub_dns_name}:{settings.hub_api_port}"
    if settings.lease_table:
        c.EC2Spawner.lease_table = settings.lease_table
        # A hub that stood by starts again from the database when it takes over (ec2spawner.lease).
        c.EC2Spawner.lease_restart_on_takeover = True
    if settings.spend_table:
        c.EC2Spawner.spend_table = settings.spend_table
        c.EC2Spawner.group_budgets_usd = dict(settings.group_budgets_usd)
        c.EC2Spawner.budget_exempt_admins = settings.budget_exempt_admins
    # JupyterHub 6 logs that extra_handlers is deprecated (in favour of services); a service could
    # not answer for the hub process's lease, which lives in the hub process.
    c.JupyterHub.extra_handlers = [
        (HEALTH_PATH, LeaseHealthHandler, {"hub_id": settings.hub_id, "lease_table": settings.lease_table})
    ]

    _apply_auth(c, settings.auth, oauth_client_secret, admin_password_file, google_service_account_key_file)

    # Idle and age limits per class: the spawner's own culler in the hub process
    # (ec2spawner.culler), started with the sweeper; this is the default of classes that set none.
    c.EC2Spawner.idle_timeout = settings.idle_timeout_s
    # The orphan sweeper and the culler start with the hub, not at the first spawn (a no-op outside a hub).
    start_sweeper_with_hub()
    return c


class ExtraConfigError(ValueError):
    """A jupyterhub_config.d file cannot be compiled (one line naming the file and the line)."""


def compile_extra_config(label: str, source: str):
    """The code object of one extra config file; :class:`ExtraConfigError` on a syntax error."""
    try:
        return compile(source, label, "exec")
    except SyntaxError as error:
        raise ExtraConfigError(f"{label}: line {error.lineno}: {error.msg}") from None


def load_extra_config(c: Config, settings: HubSettings) -> Config:
    """Run the settings' ``extra_config`` files (jupyterhub_config.d/) on ``c``, in name order.

    Called last in the hub's jupyterhub_config.py, after the platform's own settings, as TLJH
    loads its ``jupyterhub_config.d``: a file may change anything set before it. Each runs with
    ``c`` and ``get_config`` in its namespace, like a JupyterHub config file. A file that does not
    compile ends the hub's start with one line naming it (SystemExit), before anything runs.
    """
    compiled = []
    for name in sorted(settings.extra_config):
        label = f"jupyterhub_config.d/{name}"
        try:
            compiled.append((label, compile_extra_config(label, settings.extra_config[name])))
        except ExtraConfigError as error:
            raise SystemExit(f"ec2hub: {error}") from None
    for label, code in compiled:
        # The admin's own config, run as JupyterHub runs jupyterhub_config.py.
        namespace = {"c": c, "get_config": lambda: c, "__file__": label, "__name__": "__config__"}
        exec(code, namespace)  # noqa: S102
    return c


def proxy_args(proxy_command: str) -> list[str]:
    """configurable-http-proxy's command line before the arguments JupyterHub adds."""
    return [proxy_command, f"--keep-alive-timeout={PROXY_KEEP_ALIVE_TIMEOUT_S * 1000}"]


def _apply_auth(
    c: Config,
    auth: AuthSettings,
    client_secret: str | None,
    admin_password_file: str | None,
    google_service_account_key_file: str | None = None,
) -> None:
    c.Authenticator.admin_users = set(auth.admin_users)
    if auth.type == "native":
        c.JupyterHub.authenticator_class = "ec2spawner.nativeauth.NativeAuthenticator"
        # Anyone may sign up; an admin must authorize the account before it can log in.
        c.NativeAuthenticator.enable_signup = True
        c.NativeAuthenticator.open_signup = False
        c.NativeAuthenticator.minimum_password_length = MINIMUM_PASSWORD_LENGTH
        c.NativeAuthenticator.check_common_password = True
        c.NativeAuthenticator.allowed_failed_logins = ALLOWED_FAILED_LOGINS
        c.NativeAuthenticator.seconds_before_next_try = LOCKOUT_SECONDS
        c.NativeAuthenticator.lockout_max_seconds = LOCKOUT_MAX_SECONDS
        if admin_password_file is not None:
            c.NativeAuthenticator.admin_password_file = admin_password_file
        # NativeAuthenticator refuses unauthorized accounts itself, so JupyterHub's own allow
        # list must let every authenticated (= authorized) user through.
        c.Authenticator.allow_all = True
    elif auth.type == "github":
        c.JupyterHub.authenticator_class = "ec2spawner.oauth.GitHubOAuthenticator"
        section = c.GitHubOAuthenticator
        _oauth_common(section, auth, client_secret)
        if auth.allowed_organizations:
            section.allowed_organizations = set(auth.allowed_organizations)
        # Teams are the groups: reading them needs read:org (GitHub's OAuth scopes).
        section.scope = ["read:user", "read:org"]
        section.populate_teams_in_auth_state = True
        _managed_groups(section, auth, github_team_groups)
    elif auth.type == "google":
        c.JupyterHub.authenticator_class = "ec2spawner.oauth.GoogleOAuthenticator"
        section = c.GoogleOAuthenticator
        _oauth_common(section, auth, client_secret)
        # hosted_domain only blocks other domains (check_blocked_users); who of the domains may
        # sign in is said below: everyone, unless allowed groups narrow it.
        section.hosted_domain = list(auth.hosted_domains)
        if auth.hosted_domains and not auth.allowed_groups:
            section.allow_all = True
        if auth.google_groups_admin and google_service_account_key_file:
            # Groups from Google Workspace at every sign-in (ec2spawner.oauth.GoogleOAuthenticator).
            section.read_google_groups = True
            section.gsuite_administrator = {d: auth.google_groups_admin for d in auth.hosted_domains}
            section.google_service_account_keys = {d: google_service_account_key_file for d in auth.hosted_domains}
            _managed_groups(section, auth, ClaimGroups("google_groups", user_key="google_user"))
        # Without them Google's tokens carry no groups: groups stay managed in the hub.
    elif auth.type in ("oidc", "cognito"):
        c.JupyterHub.authenticator_class = "ec2spawner.oauth.GenericOAuthenticator"
        section = c.GenericOAuthenticator
        _oauth_common(section, auth, client_secret)
        # Unset endpoints stay unset (oauthenticator then names the missing one at sign-in).
        for trait, url in (("authorize_url", auth.oauth_authorize_url), ("token_url", auth.oauth_token_url)):
            if url:
                section[trait] = url
        if auth.type == "cognito":
            # Cognito's userInfo endpoint leaves out cognito:groups; the ID token has them. The
            # token comes straight from the pool's HTTPS token endpoint (OIDC Core 3.1.3.7).
            section.userdata_from_id_token = True
            section.login_service = "Amazon Cognito"
        else:
            if auth.oauth_userdata_url:
                section.userdata_url = auth.oauth_userdata_url
            section.login_service = "OpenID Connect"
        section.scope = list(auth.scopes or ["openid", "profile", "email"])
        section.username_claim = auth.username_claim or "preferred_username"
        _managed_groups(section, auth, ClaimGroups(auth.groups_claim or "groups"))
    elif auth.type == "dummy":
        # Any name, any password: only for a sandbox that asked for it explicitly.
        c.JupyterHub.authenticator_class = "dummy"
        c.Authenticator.allow_all = True


def _oauth_common(section, auth: AuthSettings, client_secret: str | None) -> None:
    section.client_id = auth.oauth_client_id or ""
    if auth.oauth_callback_url:
        section.oauth_callback_url = auth.oauth_callback_url
    if client_secret is not None:
        section.client_secret = client_secret
    if auth.oauth_client_secret_name:
        section.client_secret_source = auth.oauth_client_secret_name
    # Users an admin added in the hub may log in; nobody else unless an allow rule says so.
    section.allow_existing_users = True
    if auth.allow_all:
        section.allow_all = True


def _managed_groups(section, auth: AuthSettings, groups_key) -> None:
    """The provider's groups become the user's JupyterHub groups at every sign-in (so a class's
    ``allowed_groups`` follows the provider); members of ``admin_groups`` are admins."""
    section.manage_groups = True
    section.auth_state_groups_key = groups_key
    if auth.allowed_groups:
        section.allowed_groups = set(auth.allowed_groups)
    if auth.admin_groups:
        section.admin_groups = set(auth.admin_groups)
