"""Sign-in with Google, into a real hub, with the user's Google Workspace groups.

The hub is a JupyterHub subprocess configured by ``apply_settings`` with ``auth.type = "google"``
and ``google_groups_admin``; the service account's key is fetched from the emulator's Secrets
Manager by the hub bootstrap's every-start step, as on a hub host. Google itself is
``google_standin.GoogleStandIn`` on 127.0.0.1 (reached through upstream's ``GOOGLE_API_URL`` and
``authorize_url``): the authorization-code flow, the userinfo call, the service account's signed
JWT grant (google-auth signs it with a key made here) and the Directory API's group listing all
run for real over HTTP. The test is the browser: a cookie-keeping client following the redirects.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import boto3
import pytest
import requests as http
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from ec2spawner.hubconfig import apply_settings
from ec2spawner.oauth import GoogleOAuthenticator
from ec2spawner.settings import HubSettings
from google_standin import GoogleStandIn
from oauth_hub import (
    hub_ports,
    oauth_hub,
    offered_classes,
    sign_in_through,
    spawn_request,
    user_model,
)
from spawner_testing import REGION, REPO
from traitlets.config import Config

sys.path.insert(0, str(REPO / "bootstrap"))

from ec2hub_bootstrap import hub as hub_bootstrap

pytestmark = pytest.mark.slow

CLIENT_ID, CLIENT_SECRET = "ec2hub-google-test.apps.example", "the-google-client-secret-0123456789"
SERVICE_ACCOUNT = "groups-reader@ec2hub-test.iam.gserviceaccount.com"
DOMAIN, ADMIN = "example.org", "gadmin"
ACCOUNTS = {
    f"alice@{DOMAIN}": {"hd": DOMAIN, "groups": [f"gpu@{DOMAIN}"]},
    f"bob@{DOMAIN}": {"hd": DOMAIN, "groups": [f"staff@{DOMAIN}"]},
    f"carol@{DOMAIN}": {"hd": DOMAIN, "groups": [f"staff@{DOMAIN}", f"hub-admins@{DOMAIN}"]},
    f"mallory@{DOMAIN}": {"hd": DOMAIN, "groups": [f"outsiders@{DOMAIN}"]},
    "eve@elsewhere.example": {"hd": "elsewhere.example", "groups": ["gpu@elsewhere.example"]},
}


def service_account_key() -> tuple[dict, bytes]:
    """A service account's JSON key as Google's console downloads it, and its public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    key = {"type": "service_account", "project_id": "ec2hub-test", "private_key_id": uuid.uuid4().hex,
           "private_key": pem, "client_email": SERVICE_ACCOUNT, "client_id": "1234567890"}
    return key, public


@pytest.fixture(scope="module")
def google_hub(emulator, platform, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("google")
    ports = hub_ports()
    base = f"http://127.0.0.1:{ports['proxy']}"
    key, public = service_account_key()
    google = GoogleStandIn(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, accounts=ACCOUNTS,
                           service_account_email=SERVICE_ACCOUNT, public_key_pem=public,
                           admin=f"{ADMIN}@{DOMAIN}").start()
    key["token_uri"] = google.url + "/token"
    hub_id = "google-" + uuid.uuid4().hex[:8]
    key_secret = f"ec2hub/{hub_id}/google-service-account-abc"
    settings = HubSettings.model_validate({
        "region": REGION, "hub_id": hub_id, "subnets": platform.subnets,
        "classes": [dict(c) for c in platform.classes],
        "secret_prefix": f"/ec2hub/{hub_id}/servers/", "proxy_port": ports["proxy"], "hub_api_port": ports["hub"],
        "auth": {
            "type": "google", "admin_users": ["root"], "oauth_client_id": CLIENT_ID,
            "oauth_callback_url": f"{base}/hub/oauth_callback", "hosted_domains": [DOMAIN],
            "allowed_groups": ["gpu", "staff"], "admin_groups": ["hub-admins"],
            "google_groups_admin": ADMIN, "google_service_account_secret_name": key_secret,
        },
    })
    # The hub host's every-start step: the key from Secrets Manager into the hub's state directory.
    sm = boto3.client("secretsmanager", region_name=REGION, endpoint_url=emulator.endpoint_url)
    sm.create_secret(Name=key_secret, SecretString=json.dumps(key))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_bootstrap, "STATE", str(tmp))
        patch.setattr(hub_bootstrap, "HUB_USER", "root")
        hub_bootstrap.ensure_google_key(settings, REGION)
    key_file = tmp / "google_service_account.json"
    try:
        with oauth_hub(
            tmp, ports, settings, emulator_url=emulator.endpoint_url,
            apply_kwargs=f"oauth_client_secret={CLIENT_SECRET!r}, google_service_account_key_file={str(key_file)!r}",
            # Google's account chooser is at a fixed address upstream; the rest follows GOOGLE_API_URL.
            extra_config=f"c.GoogleOAuthenticator.authorize_url = {google.url + '/o/oauth2/v2/auth'!r}",
            env={"GOOGLE_API_URL": google.url},
        ) as hub:
            hub.google, hub.key_file = google, key_file
            yield hub
    finally:
        google.stop()
        sm.delete_secret(SecretId=key_secret, ForceDeleteWithoutRecovery=True)


def sign_in(hub, login: str) -> tuple[http.Session, http.Response]:
    return sign_in_through(hub, hub.google.url + "/o/oauth2/v2/auth", login)


def test_workspace_groups_become_hub_groups_and_decide_the_classes(google_hub):
    hub = google_hub
    alice, page = sign_in(hub, f"alice@{DOMAIN}")
    assert page.status_code == 200 and page.url.startswith(hub.base + "/hub/"), (page.url, page.text[-500:])
    model = user_model(hub, "alice")  # one hosted domain: the user name is the address without it
    assert model["groups"] == ["gpu"] and model["admin"] is False
    assert offered_classes(alice, hub) == ["gpu", "small", "spot"]

    bob, page = sign_in(hub, f"bob@{DOMAIN}")
    assert page.url.startswith(hub.base + "/hub/"), page.url
    assert user_model(hub, "bob")["groups"] == ["staff"]
    assert offered_classes(bob, hub) == ["small", "spot"]
    refused = spawn_request(bob, hub, "bob", "gpu")
    assert refused.status_code == 403
    assert refused.json()["message"] == "Instance class 'gpu' is not available to your groups: use one of: small, spot"

    # The groups were read by the service account, acting as the Workspace administrator.
    grants = [r for r in hub.google.requests if r[:2] == ("POST", "/token")]
    assert grants and all(r[2]["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer" for r in grants)
    asked = [r[2]["userKey"] for r in hub.google.requests if r[:2] == ("GET", "/admin/directory/v1/groups")]
    assert f"alice@{DOMAIN}" in asked and f"bob@{DOMAIN}" in asked


def test_an_admin_group_member_is_admin_with_groups_from_every_page(google_hub):
    browser, page = sign_in(google_hub, f"carol@{DOMAIN}")
    assert page.url.startswith(google_hub.base + "/hub/"), page.url
    model = user_model(google_hub, "carol")
    assert model["admin"] is True and sorted(model["groups"]) == ["hub-admins", "staff"]
    assert ("GET", "/admin/directory/v1/groups", {"userKey": f"carol@{DOMAIN}", "pageToken": "1"}) in \
        google_hub.google.requests
    assert browser.get(google_hub.base + "/hub/admin", allow_redirects=False, timeout=10).status_code == 200


def test_nobody_outside_the_allowed_groups_or_the_domain_signs_in(google_hub):
    _, page = sign_in(google_hub, f"mallory@{DOMAIN}")
    assert page.status_code == 403 and "not currently authorized to use this hub" in page.text
    assert google_hub.api.get(f"{google_hub.base}/hub/api/users/mallory", timeout=10).status_code == 404
    # Another Workspace's user, even in a group of the same name, is blocked by the hosted domain.
    _, page = sign_in(google_hub, "eve@elsewhere.example")
    assert page.status_code == 403
    for name in ("eve", "eve@elsewhere.example"):
        assert google_hub.api.get(f"{google_hub.base}/hub/api/users/{name}", timeout=10).status_code == 404
    assert json.loads(google_hub.key_file.read_text())["private_key"] not in google_hub.log()


def test_without_groups_every_user_of_the_domains_may_sign_in():
    """google_domains alone: upstream's hosted_domain only blocks other domains, so the domain's
    users are let in explicitly (before, nobody new could sign in)."""
    settings = HubSettings.model_validate({
        "region": REGION, "hub_id": "g", "subnets": {"us-east-1a": "subnet-a"}, "secret_prefix": "/ec2hub/g/servers/",
        "classes": [{"slug": "small", "display_name": "Small", "instance_types": ["t3.medium"],
                     "ami": "ami-12345678", "default": True, "launch_template_id": "lt-0abc"}],
        "auth": {"type": "google", "oauth_client_id": "c", "hosted_domains": [DOMAIN]},
    })
    authenticator = GoogleOAuthenticator(config=apply_settings(Config(), settings, hub_connect_ip="127.0.0.1"))

    def model(email, hd):
        user = {"email": email, "domain": email.split("@")[1], "hd": hd, "verified_email": True}
        return {"name": email.split("@")[0], "admin": None, "auth_state": {"google_user": user}}

    inside = model(f"ann@{DOMAIN}", DOMAIN)
    assert authenticator.check_blocked_users("ann", inside) and asyncio.run(authenticator.check_allowed("ann", inside))
    assert not authenticator.check_blocked_users("eve", model("eve@elsewhere.example", "elsewhere.example"))
