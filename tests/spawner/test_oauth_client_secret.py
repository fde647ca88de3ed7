"""The hub bootstrap's every-start fetch of the OAuth client secret from Secrets Manager (the emulator).

``ec2hub_bootstrap.hub.ensure_oauth_secret`` is the step ``ExecStartPre=`` runs before the hub; here
it runs in-process against moto over HTTP, writing into a temporary state directory.
"""

from __future__ import annotations

import json
import stat
import sys

import boto3
import pytest
from ec2spawner.settings import OAUTH_SECRET_PLACEHOLDER_KEY, HubSettings
from spawner_testing import REGION, REPO

sys.path.insert(0, str(REPO / "bootstrap"))

from ec2hub_bootstrap import hub as hub_bootstrap

NAME = "ec2hub/fetch-test/oauth-client-secret-0001"


def settings(secret_name):
    return HubSettings.model_validate({
        "region": REGION, "hub_id": "fetch-test", "subnets": {"us-east-1a": "subnet-a"},
        "classes": [{"slug": "small", "display_name": "Small", "instance_types": ["t3.medium"],
                     "ami": "ami-12345678", "default": True, "launch_template_id": "lt-0abc"}],
        "secret_prefix": "/ec2hub/fetch-test/servers/",
        "auth": {"type": "oidc", "oauth_client_id": "c", "oauth_client_secret_name": secret_name},
    })


@pytest.fixture
def state(tmp_path, monkeypatch, emulator):
    monkeypatch.setattr(hub_bootstrap, "STATE", str(tmp_path))
    monkeypatch.setattr(hub_bootstrap, "HUB_USER", "root")
    client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=emulator.endpoint_url)
    yield tmp_path, client
    client.delete_secret(SecretId=NAME, ForceDeleteWithoutRecovery=True)


def test_the_secret_is_fetched_at_every_start_into_a_private_file(state, capsys):
    tmp, client = state
    client.create_secret(Name=NAME, SecretString="first-secret")
    hub_bootstrap.ensure_oauth_secret(settings(NAME), REGION)
    path = tmp / "oauth_client_secret"
    assert path.read_text() == "first-secret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The operator rotates it at the provider and puts the new value: the next start has it.
    client.put_secret_value(SecretId=NAME, SecretString="second-secret")
    hub_bootstrap.ensure_oauth_secret(settings(NAME), REGION)
    assert path.read_text() == "second-secret\n"
    said = capsys.readouterr()
    assert "first-secret" not in said.out + said.err and "second-secret" not in said.out + said.err


def test_the_stacks_placeholder_stops_the_start_with_what_to_do(state, capsys):
    tmp, client = state
    client.create_secret(Name=NAME, SecretString=json.dumps({OAUTH_SECRET_PLACEHOLDER_KEY: "x", "unused": "r4nd0m"}))
    with pytest.raises(SystemExit):
        hub_bootstrap.ensure_oauth_secret(settings(NAME), REGION)
    said = capsys.readouterr()
    assert (f"'{NAME}' still holds the stack's placeholder: put the oidc client secret there (the stack's "
            "OAuthClientSecretCommand output); the hub starts once it is there") in said.out + said.err
    assert "r4nd0m" not in said.out + said.err
    assert not (tmp / "oauth_client_secret").exists()


GOOGLE_KEY = "ec2hub/fetch-test/google-service-account-0001"


def google_settings(secret_name):
    s = settings(None).model_dump()
    s["auth"] = {"type": "google", "oauth_client_id": "c", "hosted_domains": ["example.org"],
                 "google_groups_admin": "gadmin", "google_service_account_secret_name": secret_name}
    return HubSettings.model_validate(s)


@pytest.fixture
def google_key(state):
    tmp, client = state
    yield tmp, client
    client.delete_secret(SecretId=GOOGLE_KEY, ForceDeleteWithoutRecovery=True)


@pytest.mark.parametrize(("value", "said"), [
    (json.dumps({OAUTH_SECRET_PLACEHOLDER_KEY: "x", "unused": "r4nd0m"}),
     (f"'{GOOGLE_KEY}' still holds the stack's placeholder: put the Google service account's JSON key there "
     "(the stack's GoogleServiceAccountKeyCommand output); the hub starts once it is there")),
    ("r4nd0m-not-json",
     (f"'{GOOGLE_KEY}' is not a Google service account key (JSON with type service_account, client_email, "
     "private_key and token_uri, as the Google Cloud console downloads it)")),
    (json.dumps({"type": "authorized_user", "client_email": "a@b", "private_key": "r4nd0m", "token_uri": "t"}),
     f"'{GOOGLE_KEY}' is not a Google service account key"),
])
def test_a_google_key_that_is_not_one_stops_the_start_without_showing_it(google_key, capsys, value, said):
    tmp, client = google_key
    client.create_secret(Name=GOOGLE_KEY, SecretString=value)
    with pytest.raises(SystemExit):
        hub_bootstrap.ensure_google_key(google_settings(GOOGLE_KEY), REGION)
    out = capsys.readouterr()
    assert said in out.out + out.err and "r4nd0m" not in out.out + out.err
    assert not (tmp / "google_service_account.json").exists()


def test_a_google_key_is_fetched_into_a_private_file_and_removed_with_the_setting(google_key, capsys):
    tmp, client = google_key
    key = {"type": "service_account", "client_email": "reader@p.iam.gserviceaccount.com",
           "private_key": "-----BEGIN PRIVATE KEY-----\nr4nd0m\n-----END PRIVATE KEY-----\n", "token_uri": "t"}
    client.create_secret(Name=GOOGLE_KEY, SecretString=json.dumps(key))
    hub_bootstrap.ensure_google_key(google_settings(GOOGLE_KEY), REGION)
    path = tmp / "google_service_account.json"
    assert json.loads(path.read_text()) == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    # Groups no longer read from Google: the next start removes the key from the host.
    hub_bootstrap.ensure_google_key(google_settings(None), REGION)
    assert not path.exists()
    out = capsys.readouterr()
    assert "r4nd0m" not in out.out + out.err
