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
#   environment (the unit's EnvironmentFile=/run/ec2hub/hub.env, from Secrets Manager):
#     EC2HUB_DB_URL            the hub database (RDS for PostgreSQL), postgresql+psycopg://...
#     JPY_COOKIE_SECRET        read by JupyterHub itself (hex): the same on every hub host
#     CONFIGPROXY_AUTH_TOKEN   read by ConfigurableHTTPProxy itself: hub <-> proxy token
#   /var/lib/ec2hub/oauth_client_secret  only with an OAuth authenticator   (0600)
#   /var/lib/ec2hub/google_service_account.json  only with Google Workspace groups (0600)
#   /var/lib/ec2hub/admin_password     the first admin's password, from Secrets Manager (0600)
import json
import os
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
google_key_file = STATE / "google_service_account.json"
apply_settings(
    c,
    settings,
    hub_connect_ip=host["private_ip"],
    admin_password_file=str(admin_password_file) if admin_password_file.exists() else None,
    google_service_account_key_file=str(google_key_file) if google_key_file.exists() else None,
    oauth_client_secret=(
        client_secret_file.read_text(encoding="utf-8").strip() if client_secret_file.exists() else None
    ),
)
if host.get("admin_user"):
    # The admin named by the hub instance's ec2hub:admin-user tag (with native auth: the account is
    # created at start with the stack's generated password; nobody can sign up under this name).
    c.Authenticator.admin_users = set(c.Authenticator.admin_users) | {host["admin_user"]}

# State kept across restarts and replacements of the hub host: none of it on this host.
missing = [v for v in ("EC2HUB_DB_URL", "JPY_COOKIE_SECRET", "CONFIGPROXY_AUTH_TOKEN") if not os.environ.get(v)]
if missing:
    sys.exit(f"ec2hub: {', '.join(missing)} not set: the hub's every-start step writes them "
             "(ExecStartPre=, /run/ec2hub/hub.env); see its log lines 'ec2hub-hub: secrets:'")
c.JupyterHub.db_url = os.environ["EC2HUB_DB_URL"]
# A new ec2hub with a newer JupyterHub migrates the schema at start (an empty database is created).
c.JupyterHub.upgrade_db = True
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")
# Notebooks run on their own instances: a hub restart must not stop them (also set by apply_settings;
# restated here because losing it would stop every user's server on each hub restart).
c.JupyterHub.cleanup_servers = False
# A hub that takes the hub lease over restarts at once through ec2hub-hub-restart.path (no RestartSec).
c.EC2Spawner.lease_restart_request = str(STATE / "restart-requested")

# Last: the repository's jupyterhub_config.d/ files (in the settings document), in name order, so
# they may change anything above (as TLJH's jupyterhub_config.d).
load_extra_config(c, settings)
