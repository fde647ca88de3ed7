# ec2hub: JupyterHub configuration of the hub host. Thin on purpose: every platform value comes
# from the settings document (/etc/ec2hub/settings.json, written by bootstrap/ec2hub_bootstrap/hub.py from
# the SSM parameter infra made) and ec2spawner.hubconfig.apply_settings turns it into config.
#
# The hub user data carries this file (infra/userdata.py); bootstrap/ec2hub_bootstrap/hub.py installs it as
# /etc/ec2hub/jupyterhub_config.py on every start of the hub.
#
# Inputs written by bootstrap/ec2hub_bootstrap/hub.py on every start of the hub:
#   /etc/ec2hub/settings.json          HubSettings (nothing secret), with the deployment's
#                                      jupyterhub_config.d files (run last, below)
#   /etc/ec2hub/host.json              {"private_ip", "admin_user"} from IMDS and tags
#   /etc/ec2hub/allow-dummy-auth       present only in the local sandbox's image
#   /var/lib/ec2hub/proxy_auth_token   hub <-> configurable-http-proxy token (0600, kept)
#   /var/lib/ec2hub/jupyterhub_cookie_secret                                (0600, kept)
#   /var/lib/ec2hub/oauth_client_secret  with an identity provider: its client secret, from
#                                      Secrets Manager at every start (0600)
#   /var/lib/ec2hub/admin_password     the first admin's password, from Secrets Manager (0600)
import json
import sys
from pathlib import Path

from ec2spawner.hubconfig import apply_settings, load_extra_config
from ec2spawner.settings import HubSettings

ETC = Path("/etc/ec2hub")
STATE = Path("/var/lib/ec2hub")

c = get_config()  # noqa: F821 (JupyterHub provides it)

settings = HubSettings.load(ETC / "settings.json")
host = json.loads((ETC / "host.json").read_text(encoding="utf-8"))

# DummyAuthenticator accepts any password: refuse it unless this host's image allows it (only the
# local sandbox's image has the marker file; nothing in AWS writes it).
if settings.auth.type == "dummy" and not (ETC / "allow-dummy-auth").exists():
    sys.exit("ec2hub: settings ask for the dummy authenticator, which is for the local sandbox only")

client_secret_file = STATE / "oauth_client_secret"
admin_password_file = STATE / "admin_password"
apply_settings(
    c,
    settings,
    hub_connect_ip=host["private_ip"],
    admin_password_file=str(admin_password_file) if admin_password_file.exists() else None,
    oauth_client_secret=(
        client_secret_file.read_text(encoding="utf-8").strip() if client_secret_file.exists() else None
    ),
    python=sys.executable,
)
if host.get("admin_user"):
    # The admin named by the hub instance's ec2hub:admin-user tag (with native auth: the account is
    # created at start with the stack's generated password; nobody can sign up under this name).
    c.Authenticator.admin_users = set(c.Authenticator.admin_users) | {host["admin_user"]}

# State kept across restarts of the hub (and its host), never in the working directory.
c.JupyterHub.db_url = f"sqlite:///{STATE}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.auth_token = (STATE / "proxy_auth_token").read_text(encoding="utf-8").strip()
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")
# Notebooks run on their own instances: a hub restart must not stop them (also set by apply_settings;
# restated here because losing it would stop every user's server on each hub restart).
c.JupyterHub.cleanup_servers = False

# Last: the repository's jupyterhub_config.d/ files (in the settings document), in name order, so
# they may change anything above (as TLJH's jupyterhub_config.d).
load_extra_config(c, settings)
