"""Sign-in with GitHub, into a real hub, with the user's GitHub teams as groups.

The hub is a JupyterHub subprocess configured by ``apply_settings`` with ``auth.type = "github"``;
GitHub itself is ``github_standin.GitHubStandIn`` on 127.0.0.1, reached through upstream's
``GITHUB_URL`` (GitHub Enterprise's way: the REST API under ``/api/v3``). The authorization-code
flow, the user call, the paged team listing and the organization membership check all run for real
over HTTP; the test is the browser.
"""

from __future__ import annotations

import html
import uuid

import pytest
import requests as http
from ec2spawner.settings import HubSettings
from github_standin import GitHubStandIn
from oauth_hub import (
    hub_ports,
    oauth_hub,
    offered_classes,
    sign_in_through,
    spawn_request,
    user_model,
)
from spawner_testing import REGION

pytestmark = pytest.mark.slow

CLIENT_ID, CLIENT_SECRET = "Iv1.ec2hubtest012345", "the-github-client-secret-0123456789"
ACCOUNTS = {
    "alice": {"orgs": ["lab"], "teams": [("lab", "gpu")]},
    "bob": {"orgs": ["lab"], "teams": []},
    "carol": {"orgs": ["lab"], "teams": [("lab", "staff"), ("lab", "hub-admins")]},
    "mallory": {"orgs": ["elsewhere"], "teams": [("elsewhere", "gpu")]},
}


@pytest.fixture(scope="module")
def github_hub(emulator, platform, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("github")
    ports = hub_ports()
    base = f"http://127.0.0.1:{ports['proxy']}"
    github = GitHubStandIn(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, accounts=ACCOUNTS).start()
    hub_id = "github-" + uuid.uuid4().hex[:8]
    classes = [dict(c) for c in platform.classes]
    for cls in classes:  # GitHub's groups are <org>:<team>
        if cls.get("allowed_groups"):
            cls["allowed_groups"] = ["lab:gpu"]
    settings = HubSettings.model_validate({
        "region": REGION, "hub_id": hub_id, "subnets": platform.subnets, "classes": classes,
        "secret_prefix": f"/ec2hub/{hub_id}/servers/", "proxy_port": ports["proxy"], "hub_api_port": ports["hub"],
        "auth": {
            "type": "github", "admin_users": ["root"], "oauth_client_id": CLIENT_ID,
            "oauth_callback_url": f"{base}/hub/oauth_callback", "allowed_organizations": ["lab"],
            "admin_groups": ["lab:hub-admins"],
            "oauth_client_secret_name": "ec2hub/github-test/oauth-client-secret-abc",
        },
    })
    try:
        with oauth_hub(tmp, ports, settings, emulator_url=emulator.endpoint_url,
                       apply_kwargs=f"oauth_client_secret={CLIENT_SECRET!r}",
                       env={"GITHUB_URL": github.url}) as hub:
            hub.github = github
            yield hub
    finally:
        github.stop()


def sign_in(hub, login: str) -> tuple[http.Session, http.Response]:
    return sign_in_through(hub, hub.github.url + "/login/oauth/authorize", login)


def test_teams_become_hub_groups_and_decide_the_classes(github_hub):
    hub = github_hub
    alice, page = sign_in(hub, "alice")
    assert page.status_code == 200 and page.url.startswith(hub.base + "/hub/"), (page.url, page.text[-500:])
    assert user_model(hub, "alice")["groups"] == ["lab:gpu"]
    assert offered_classes(alice, hub) == ["gpu", "small", "spot"]
    # The hub asked for the scope that lists teams and organizations.
    [authorize] = [r for r in hub.github.requests if r[:2] == ("GET", "/login/oauth/authorize")][:1]
    assert set(authorize[2]["scope"].split()) == {"read:user", "read:org"}

    # An organization member in no team signs in, with no groups, and gets a 403 for the GPU class.
    bob, page = sign_in(hub, "bob")
    assert page.url.startswith(hub.base + "/hub/"), page.url
    assert user_model(hub, "bob")["groups"] == []
    refused = spawn_request(bob, hub, "bob", "gpu")
    assert refused.status_code == 403
    assert refused.json()["message"] == "Instance class 'gpu' is not available to your groups: use one of: small, spot"


def test_an_admin_team_member_is_admin_with_teams_from_every_page(github_hub):
    browser, page = sign_in(github_hub, "carol")
    assert page.url.startswith(github_hub.base + "/hub/"), page.url
    model = user_model(github_hub, "carol")
    assert model["admin"] is True and sorted(model["groups"]) == ["lab:hub-admins", "lab:staff"]
    assert ("GET", "/api/v3/user/teams", {"per_page": "100", "page": "2"}) in github_hub.github.requests
    assert browser.get(github_hub.base + "/hub/admin", allow_redirects=False, timeout=10).status_code == 200


def test_outside_the_organization_nobody_signs_in(github_hub):
    _, page = sign_in(github_hub, "mallory")
    assert page.status_code == 403 and "not currently authorized to use this hub" in page.text
    assert ("GET", "/api/v3/orgs/lab/members/mallory", {}) in github_hub.github.requests
    assert github_hub.api.get(f"{github_hub.base}/hub/api/users/mallory", timeout=10).status_code == 404


def test_a_refused_client_secret_is_one_clear_line_and_a_503(github_hub):
    github_hub.github.client_secret = "rotated-at-github"
    try:
        _, page = sign_in(github_hub, "alice")
    finally:
        github_hub.github.client_secret = CLIENT_SECRET
    assert page.status_code == 503
    assert "the identity provider refused this hub's client credentials" in html.unescape(page.text)
    assert (f"refused client id {CLIENT_ID}" in github_hub.log()
            and "ec2hub/github-test/oauth-client-secret-abc" in github_hub.log())
    assert CLIENT_SECRET not in github_hub.log()
