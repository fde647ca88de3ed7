"""Sign-in through a real OpenID Connect provider, into a real hub, with the provider's groups.

The provider is panva's ``oidc-provider`` (npm, pinned in package.json) run by node from
node_modules with ``oidc_provider.mjs``; the hub is a JupyterHub subprocess configured by
``apply_settings`` with ``auth.type = "oidc"``, both on 127.0.0.1. The test is the browser: a
cookie-keeping HTTP client that follows the redirects of the authorization-code flow and fills in
the provider's login and consent forms. Spawns go to the AWS emulator.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests as http
from ec2spawner.settings import HubSettings
from oauth_hub import hub_ports, oauth_hub, spawn_request, user_model
from spawner_testing import REGION, REPO
from waiting import free_port, wait_until

pytestmark = pytest.mark.slow

CLIENT_ID, CLIENT_SECRET = "ec2hub-test", "the-registered-client-secret-0123456789"
SECRET_NAME = "ec2hub/oidc-test/oauth-client-secret-abc"
# Login -> the groups the provider's `groups` claim lists.
ACCOUNTS = {"alice": ["gpu"], "bob": ["staff"], "carol": ["staff", "hub-admins"], "mallory": ["outsiders"]}
NODE = REPO / "node_modules/.bin/node"


class Provider:
    """The oidc-provider process; ``restart(secret)`` registers the client with another secret."""

    def __init__(self, tmp: Path, port: int, redirect_uri: str):
        self.tmp, self.port, self.redirect_uri = tmp, port, redirect_uri
        self.issuer = f"http://127.0.0.1:{port}"
        self.log_path = tmp / "oidc-provider.log"
        self.proc: subprocess.Popen | None = None

    def start(self, secret: str = CLIENT_SECRET) -> None:
        env = {**os.environ, "OIDC_PORT": str(self.port), "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": secret,
               "OIDC_REDIRECT_URI": self.redirect_uri, "OIDC_ACCOUNTS": json.dumps(ACCOUNTS)}
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([str(NODE), str(Path(__file__).with_name("oidc_provider.mjs"))],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                pytest.fail("oidc-provider exited:\n" + self.log_path.read_text())
            try:
                return http.get(self.issuer + "/.well-known/openid-configuration", timeout=2).ok
            except http.ConnectionError:
                return False

        wait_until(up, 30, "the OpenID Connect provider")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @contextmanager
    def registered_secret(self, secret: str):
        self.stop()
        self.start(secret)
        try:
            yield
        finally:
            self.stop()
            self.start()


@pytest.fixture(scope="module")
def oidc_hub(request, emulator, platform, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oidc")
    ports = {**hub_ports(), "provider": free_port()}
    base = f"http://127.0.0.1:{ports['proxy']}"
    provider = Provider(tmp, ports["provider"], f"{base}/hub/oauth_callback")
    hub_id = "oidc-" + uuid.uuid4().hex[:8]
    settings = HubSettings.model_validate({
        "region": REGION, "hub_id": hub_id, "subnets": platform.subnets,
        "classes": [dict(c) for c in platform.classes],
        "secret_prefix": f"/ec2hub/{hub_id}/servers/", "proxy_port": ports["proxy"], "hub_api_port": ports["hub"],
        "auth": {
            "type": "oidc", "admin_users": ["root"], "oauth_client_id": CLIENT_ID,
            "oauth_callback_url": f"{base}/hub/oauth_callback",
            "oauth_authorize_url": f"{provider.issuer}/auth", "oauth_token_url": f"{provider.issuer}/token",
            "oauth_userdata_url": f"{provider.issuer}/me", "oauth_client_secret_name": SECRET_NAME,
            "scopes": ["openid", "profile", "groups"], "groups_claim": "groups",
            "allowed_groups": ["gpu", "staff"], "admin_groups": ["hub-admins"],
        },
    })
    provider.start()
    try:
        with oauth_hub(tmp, ports, settings, emulator_url=emulator.endpoint_url,
                       apply_kwargs=f"oauth_client_secret={CLIENT_SECRET!r}", extra_config="""
c.JupyterHub.load_roles = [{"name": "test", "scopes": ["admin:users", "admin:servers", "read:servers"],
                            "services": ["test"]}]
c.EC2Spawner.server_url_template = "http://127.0.0.1:{port}"
c.EC2Spawner.fast_poll_interval = 0.2
c.EC2Spawner.start_timeout = 30
c.EC2Spawner.http_timeout = 30
# A spawn request answers at once (202); the test watches EC2.
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
""") as hub:
            hub.provider, hub.hub_id = provider, hub_id
            yield hub
    finally:
        provider.stop()
        if request.session.testsfailed:
            print("---- provider log ----\n" + provider.log_path.read_text())


def submit_form(session: http.Session, page: http.Response, **fields) -> http.Response:
    """Post the page's form (its hidden inputs plus ``fields``) as a browser would."""
    action = re.search(r'<form[^>]*action="([^"]+)"', page.text)
    assert action, page.text
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    return session.post(http.compat.urljoin(page.url, html.unescape(action.group(1))),
                        data={**hidden, **fields}, timeout=20)


def sign_in(hub, login: str) -> tuple[http.Session, http.Response]:
    """The authorization-code flow from the hub's login button to the hub's answer."""
    browser = http.Session()
    page = browser.get(hub.base + "/hub/oauth_login", timeout=20)
    assert page.url.startswith(hub.provider.issuer + "/interaction/"), page.url
    page = submit_form(browser, page, login=login, password="any password")  # the provider's login form
    if page.url.startswith(hub.provider.issuer + "/interaction/"):
        page = submit_form(browser, page)  # the provider's consent form
    return browser, page


def test_a_provider_group_reaches_the_class_it_allows(oidc_hub, live_oidc):
    hub = oidc_hub
    browser, page = sign_in(hub, "alice")
    assert page.status_code == 200 and page.url.startswith(hub.base + "/hub/"), (page.url, page.text[-500:])
    model = user_model(hub, "alice")
    assert model["groups"] == ["gpu"] and model["admin"] is False

    # Accepted and launched as that class (no notebook server answers here: the spawn is
    # cancelled once EC2 has the instance).
    started = spawn_request(browser, hub, "alice", "gpu")
    assert started.status_code == 202, started.text
    [launched] = wait_until(lambda: live_oidc("alice"), 30, "alice's instance")
    assert {t["Key"]: t["Value"] for t in launched["Tags"]}["ec2hub:class"] == "gpu"
    assert launched["InstanceType"] == "g5.xlarge"
    assert hub.api.delete(f"{hub.base}/hub/api/users/alice/server", timeout=30).status_code in (202, 204)
    wait_until(lambda: not user_model(hub, "alice")["servers"] and not live_oidc("alice"), 60,
               "alice's server to stop")


def test_a_user_outside_the_group_gets_403_for_its_class(oidc_hub, live_oidc):
    hub = oidc_hub
    browser, page = sign_in(hub, "bob")
    assert page.url.startswith(hub.base + "/hub/"), page.url
    assert user_model(hub, "bob")["groups"] == ["staff"]
    refused = spawn_request(browser, hub, "bob", "gpu")
    assert refused.status_code == 403
    assert refused.json()["message"] == "Instance class 'gpu' is not available to your groups: use one of: small, spot"
    assert live_oidc("bob") == []


def test_an_admin_group_member_is_admin(oidc_hub):
    browser, page = sign_in(oidc_hub, "carol")
    assert page.url.startswith(oidc_hub.base + "/hub/"), page.url
    model = user_model(oidc_hub, "carol")
    assert model["admin"] is True and sorted(model["groups"]) == ["hub-admins", "staff"]
    assert browser.get(oidc_hub.base + "/hub/admin", allow_redirects=False, timeout=10).status_code == 200


def test_a_user_in_no_allowed_group_cannot_sign_in(oidc_hub):
    _, page = sign_in(oidc_hub, "mallory")
    assert page.status_code == 403 and "not currently authorized to use this hub" in page.text
    assert oidc_hub.api.get(f"{oidc_hub.base}/hub/api/users/mallory", timeout=10).status_code == 404


def test_a_wrong_client_secret_fails_sign_in_with_a_clear_log_line(oidc_hub):
    with oidc_hub.provider.registered_secret("a-secret-the-hub-does-not-have"):
        _, page = sign_in(oidc_hub, "bob")
    assert page.status_code == 503
    assert "the identity provider refused this hub's client credentials" in html.unescape(page.text)
    line = (f"Sign-in failed: the identity provider's token endpoint {oidc_hub.provider.issuer}/token refused "
            f"client id {CLIENT_ID} (HTTP 401 invalid_client): the client secret is wrong or the client is not "
            f"registered there; put the provider's client secret in the Secrets Manager secret {SECRET_NAME}")
    assert line in oidc_hub.log()
    assert CLIENT_SECRET not in oidc_hub.log()


CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/install-system-deps.sh), as tests/e2e uses it
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def test_in_a_browser_the_sign_in_button_leads_through_the_provider_to_the_allowed_classes(oidc_hub):
    """Headless Chromium (Playwright): the hub's login button, the provider's own forms, and the
    spawn form offering exactly the classes the provider's groups allow."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            offered = {}
            for login in ("alice", "bob"):
                page = browser.new_context().new_page()
                page.set_default_timeout(30_000)
                page.goto(oidc_hub.base + "/hub/login")
                page.click("text=Sign in with OpenID Connect")
                page.wait_for_url(re.compile(re.escape(oidc_hub.provider.issuer) + "/interaction/.*"))
                page.fill("input[name=login]", login)
                page.fill("input[name=password]", "any password")
                page.click("button[type=submit]")
                page.wait_for_url(re.compile(".*/interaction/.*|.*/hub/.*"))
                if "/interaction/" in page.url:
                    page.click("button[type=submit]")  # the provider's consent form
                page.wait_for_url(re.compile(re.escape(oidc_hub.base) + "/hub/spawn.*"))
                page.wait_for_selector("input[name=instance_class]")
                offered[login] = sorted(page.eval_on_selector_all(
                    "input[name=instance_class]", "inputs => inputs.map(i => i.value)"))
                page.context.close()
        finally:
            browser.close()
    assert offered == {"alice": ["gpu", "small", "spot"], "bob": ["small", "spot"]}


@pytest.fixture
def live_oidc(ec2, oidc_hub):
    from spawner_testing import live_instances

    return lambda user=None: live_instances(ec2, oidc_hub.hub_id, user)
