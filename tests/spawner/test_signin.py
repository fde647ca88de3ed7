"""Native sign-in through a real hub's login and sign-up forms (JupyterHub subprocess on 127.0.0.1).

The hub runs the project's hub config (``apply_settings`` with native auth) with the lockout made
short for the test: 3 failures, then 2 s doubling per further failure.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests as http
from oauth_hub import hub_process, local_hub_config
from spawner_testing import REGION
from waiting import free_port, wait_until

pytestmark = pytest.mark.slow

ADMIN, ADMIN_PASSWORD = "admin", "correct horse battery staple"
# The lockout must outlast a few sign-ins (bcrypt each) on a loaded machine: the checks made
# during a lockout would otherwise see it end first.
ALLOWED_FAILURES, LOCKOUT_S = 3, 5


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signin")
    ports = {name: free_port() for name in ("proxy", "proxy_api", "hub")}
    settings = {
        "region": REGION, "hub_id": "signin", "subnets": {"us-east-1a": "subnet-0123456789abcdef0"},
        "classes": [{"slug": "small", "display_name": "Small", "instance_types": ["t3.medium"],
                     "ami": "ami-12345678", "default": True, "launch_template_id": "lt-0abc"}],
        "secret_prefix": "/ec2hub/signin/servers/", "proxy_port": ports["proxy"],
        "hub_api_port": ports["hub"], "auth": {"type": "native", "admin_users": [ADMIN]},
    }
    (tmp / "settings.json").write_text(json.dumps(settings))
    (tmp / "admin_password").write_text(ADMIN_PASSWORD + "\n")
    (tmp / "jupyterhub_config.py").write_text(f"""
import json
from ec2spawner.hubconfig import apply_settings
from ec2spawner.settings import HubSettings

apply_settings(c, HubSettings.model_validate(json.load(open({str(tmp / 'settings.json')!r}))),
               hub_connect_ip="127.0.0.1", hub_ip="127.0.0.1",
               admin_password_file={str(tmp / 'admin_password')!r})
{local_hub_config(tmp, ports)}
c.JupyterHub.services = []
c.JupyterHub.load_roles = []
c.EC2Spawner.sweep_orphans = False
c.NativeAuthenticator.allowed_failed_logins = {ALLOWED_FAILURES}
c.NativeAuthenticator.seconds_before_next_try = {LOCKOUT_S}
c.NativeAuthenticator.lockout_max_seconds = 16
""")
    # No AWS call is expected; any would go to a closed loopback port.
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
    base = f"http://127.0.0.1:{ports['proxy']}"
    with hub_process(tmp, base + "/hub/health", env):
        yield type("Hub", (), {"base": base, "log": tmp / "hub.log"})


class Browser:
    """A cookie-keeping client that sends the _xsrf token the hub's forms require."""

    def __init__(self, base):
        self.base, self.session = base, http.Session()

    def post_form(self, path, data):
        self.session.get(self.base + path, timeout=10)
        xsrf = self.session.cookies.get("_xsrf", "")
        return self.session.post(self.base + path, data={**data, "_xsrf": xsrf},
                                 allow_redirects=False, timeout=10)

    def login(self, name, password) -> int:
        return self.login_reply(name, password).status_code

    def login_reply(self, name, password):
        return self.post_form("/hub/login", {"username": name, "password": password})


def sign_up(hub, name, password) -> tuple[str, str]:
    reply = Browser(hub.base).post_form("/hub/signup", {
        "username": name, "signup_password": password, "signup_password_confirmation": password})
    assert reply.status_code == 200
    alert = re.search(r'<div class="alert (alert-\w+)" role="alert">(.*?)</div>', reply.text, re.DOTALL)
    assert alert, reply.text
    return alert.group(1), re.sub(r"\s+", " ", alert.group(2)).strip()


def authorized_user(hub, name, password):
    assert sign_up(hub, name, password)[0] == "alert-info"  # sent to the admin
    admin = Browser(hub.base)
    assert admin.login(ADMIN, ADMIN_PASSWORD) == 302
    assert admin.session.get(f"{hub.base}/hub/authorize/{name}", timeout=10).ok
    return name


def test_the_admin_account_exists_with_the_generated_password(hub):
    admin = Browser(hub.base)
    assert admin.login(ADMIN, ADMIN_PASSWORD) == 302
    assert admin.session.get(f"{hub.base}/hub/admin", allow_redirects=False, timeout=10).status_code == 200


def test_the_admin_name_cannot_be_claimed_through_sign_up(hub):
    alert, message = sign_up(hub, ADMIN, "a different long passphrase")
    assert alert == "alert-danger", message
    assert Browser(hub.base).login(ADMIN, "a different long passphrase") == 403
    assert Browser(hub.base).login(ADMIN, ADMIN_PASSWORD) == 302


@pytest.mark.parametrize("password", ["elevenchars", "1qaz2wsx3edc"], ids=["short", "common"])
def test_short_or_common_password_is_refused_at_sign_up(hub, password):
    name = f"weak-{len(password)}"
    alert, message = sign_up(hub, name, password)
    assert alert == "alert-danger"
    assert "at least 12 characters and is not too common" in message
    # No account was made: the same name signs up with a good password.
    assert sign_up(hub, name, "a long enough passphrase")[0] == "alert-info"


def test_wrong_passwords_lock_the_account_out_with_a_growing_delay(hub):
    name, password = authorized_user(hub, "carol", "carols long passphrase"), "carols long passphrase"
    browser = Browser(hub.base)
    for _ in range(ALLOWED_FAILURES):
        assert browser.login(name, "wrong password") == 403
    # Locked: the right password is refused too.
    assert browser.login(name, password) == 403
    # The first lockout is LOCKOUT_S; waiting it out is the behaviour under test (refusals during
    # the lockout are not counted, so the wait is not extended by the check above).
    time.sleep(LOCKOUT_S + 1.1)
    failed_at = time.monotonic()
    assert browser.login(name, "wrong password") == 403
    # One more failure: now twice as long. The right password works only after that.
    assert browser.login(name, password) == 403
    wait_until(lambda: browser.login(name, password) == 302, 30, "the second lockout to end")
    assert time.monotonic() - failed_at >= 2 * LOCKOUT_S


def test_a_locked_out_pending_account_does_not_reveal_its_password(hub):
    """'Not authorized yet' means the password was right: not said while the name is locked."""
    name, password = "dave", "daves long passphrase"
    assert sign_up(hub, name, password)[0] == "alert-info"  # pending: not authorized
    browser = Browser(hub.base)
    first = browser.login_reply(name, password)
    assert first.status_code == 403 and "has not been authorized" in first.text
    for _ in range(ALLOWED_FAILURES):
        assert browser.login(name, "wrong password") == 403
    locked = browser.login_reply(name, password)
    assert locked.status_code == 403
    assert "has not been authorized" not in locked.text
    assert "Invalid username or password." in locked.text
