"""Parts of the hub launcher (bootstrap/ec2hub_bootstrap/hub.py): the state secrets it turns into
the hub service's environment, and the hub API's record it points at its host (against the AWS
emulator)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ec2hub_bootstrap import hub as launch

RDS_SECRET = {  # what RDS's secret attachment makes of the stack's generated credentials
    "engine": "postgres",
    "username": "ec2hub",
    "password": "Zx9kQ2mN7pL4vB8cR1tY6wE3uI5oA0sD",
    "host": "ec2hub-db.abcdefghijkl.us-east-1.rds.amazonaws.com",
    "port": 5432,
    "dbname": "jupyterhub",
    "dbInstanceIdentifier": "ec2hub-db",
}


def test_database_url_is_psycopg_with_tls_required_from_the_rds_secret():
    assert launch.database_url(RDS_SECRET) == (
        "postgresql+psycopg://ec2hub:Zx9kQ2mN7pL4vB8cR1tY6wE3uI5oA0sD@"
        "ec2hub-db.abcdefghijkl.us-east-1.rds.amazonaws.com:5432/jupyterhub?sslmode=require"
    )


def test_database_url_quotes_what_a_url_cannot_hold():
    url = launch.database_url({**RDS_SECRET, "password": "a@b/c:d", "port": "5432"})
    assert url.startswith("postgresql+psycopg://ec2hub:a%40b%2Fc%3Ad@ec2hub-db.")


def test_an_incomplete_database_secret_is_refused_without_showing_its_values():
    secret = {k: v for k, v in RDS_SECRET.items() if k != "host"}
    with pytest.raises(ValueError) as raised:
        launch.database_url(secret)
    assert "needs username, password, host, port and dbname" in str(raised.value)
    assert RDS_SECRET["password"] not in str(raised.value)


@pytest.mark.parametrize("value, ok", [
    ("0" * 64, True), ("ab" * 32 + "\n", True), ("AB" * 32, False), ("0" * 63, False), ("g" * 64, False),
])
def test_cookie_secret_and_proxy_token_are_64_hex_digits(value, ok):
    if ok:
        assert launch.hex_secret(value) == value.strip()
    else:
        with pytest.raises(ValueError, match="is not 64 hex digits"):
            launch.hex_secret(value)


def test_environment_file_round_trips_and_refuses_what_systemd_would_unquote():
    values = {"JPY_COOKIE_SECRET": "ab" * 32, "EC2HUB_DB_URL": launch.database_url(RDS_SECRET)}
    text = launch.environment_file(values)
    assert text == f'EC2HUB_DB_URL="{values["EC2HUB_DB_URL"]}"\nJPY_COOKIE_SECRET="{"ab" * 32}"\n'
    assert launch.read_environment_file(text) == values
    for bad in ('a"b', "a\\b", "a\nb", "a$b", "a`b"):
        with pytest.raises(ValueError, match="X: a character systemd would unquote"):
            launch.environment_file({"X": bad})


def test_the_unit_reads_the_environment_file_the_launcher_writes():
    unit = (launch.SOURCES / launch.UNIT_NAME).read_text()
    assert f"EnvironmentFile=-{launch.ENV_FILE}" in unit.splitlines()
    assert launch.ENV_FILE.startswith("/run/")  # tmpfs: never on the host's disk


def test_the_hub_record_change_is_one_upsert_of_an_a_record_with_a_short_ttl():
    assert launch.hub_record_change("hub.ec2hub.internal", "10.0.1.5") == {
        "Comment": "ec2hub: the hub API is on this host",
        "Changes": [{
            "Action": "UPSERT",
            "ResourceRecordSet": {"Name": "hub.ec2hub.internal", "Type": "A", "TTL": 10,
                                  "ResourceRecords": [{"Value": "10.0.1.5"}]},
        }],
    }


def hub_record(r53, zone_id: str) -> list[tuple[str, int, list[str]]]:
    records = r53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return [(r["Name"], r["TTL"], [v["Value"] for v in r["ResourceRecords"]]) for r in records if r["Type"] == "A"]


@pytest.fixture
def route53_zone(aws, monkeypatch):
    """A hosted zone in the AWS emulator, and the launcher's AWS clients pointed at it."""
    import uuid

    from .conftest import client

    for key, value in {"AWS_ENDPOINT_URL": aws, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    r53 = client(aws, "route53")
    zone = r53.create_hosted_zone(Name="ec2hub.internal", CallerReference=str(uuid.uuid4()))["HostedZone"]["Id"]
    yield r53, zone.rsplit("/", 1)[-1]
    records = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    changes = [{"Action": "DELETE", "ResourceRecordSet": r} for r in records if r["Type"] == "A"]
    if changes:
        r53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": changes})
    r53.delete_hosted_zone(Id=zone)


def dns_settings(zone_id: str):
    from ec2spawner.settings import HubSettings

    return HubSettings.model_validate({
        "region": "us-east-1", "hub_id": "ec2hub-test", "subnets": {"us-east-1a": "subnet-0a"},
        "classes": [{"slug": "small", "display_name": "Small", "instance_types": ["t3.medium"],
                     "ami": "ami-0123456789abcdef0", "launch_template_id": "lt-0a", "default": True}],
        "secret_prefix": "/ec2hub/ec2hub-test/servers/", "hub_dns_zone_id": zone_id, "hub_dns_name": "hub.ec2hub.internal",
    })


def test_each_start_points_the_hub_record_at_this_host(route53_zone, capsys):
    r53, zone_id = route53_zone
    launch.ensure_hub_record(dns_settings(zone_id), "10.0.1.5", "us-east-1")
    assert hub_record(r53, zone_id) == [("hub.ec2hub.internal.", 10, ["10.0.1.5"])]
    # A replacement host (another address) takes the name over with the same one change.
    launch.ensure_hub_record(dns_settings(zone_id), "10.0.1.9", "us-east-1")
    assert hub_record(r53, zone_id) == [("hub.ec2hub.internal.", 10, ["10.0.1.9"])]
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"ec2hub-hub: dns: hub.ec2hub.internal A 10.0.1.9 (ttl 10 s) upserted in hosted zone {zone_id}")


def test_a_hub_record_that_cannot_be_written_fails_the_start_saying_why(route53_zone, capsys):
    with pytest.raises(SystemExit) as exited:
        launch.ensure_hub_record(dns_settings("Z0NOSUCHZONE"), "10.0.1.5", "us-east-1")
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("ec2hub-hub: dns: ERROR: UPSERT hub.ec2hub.internal A 10.0.1.5 in hosted zone Z0NOSUCHZONE "
                          "failed: An error occurred (NoSuchHostedZone)"), err
    assert "the hub starts once it succeeds (systemd tries again" in err


@pytest.fixture
def settings_parameter(aws, monkeypatch, tmp_path):
    """A settings parameter in the AWS emulator, the launcher pointed at it, and its applied-version
    file in a scratch directory."""
    from .conftest import client

    for key, value in {"AWS_ENDPOINT_URL": aws, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(launch, "SETTINGS_FILE", str(tmp_path / "settings.json"))
    ssm = client(aws, "ssm")
    name = f"/ec2hub/watch-{tmp_path.name}/settings"
    ssm.put_parameter(Name=name, Type="String", Value='{"v": 1}')
    return ssm, name


def test_the_settings_watcher_sees_a_new_document_only_once_the_hub_ran_an_older_one(settings_parameter):
    ssm, name = settings_parameter
    # Before the hub's first start: nothing to restart (its start applies the newest).
    assert launch.settings_changed(name, "us-east-1") is None
    Path(launch.SETTINGS_FILE).write_text('{"v": 1}')  # what the every-start step wrote
    assert launch.settings_changed(name, "us-east-1") is None
    ssm.put_parameter(Name=name, Type="String", Value='{"v": 2}', Overwrite=True)  # a deploy
    assert launch.settings_changed(name, "us-east-1") == 2
    Path(launch.SETTINGS_FILE).write_text('{"v": 2}')  # the restarted hub's every-start step
    assert launch.settings_changed(name, "us-east-1") is None
    # A parameter made again (version 1 again) with another document is a change too.
    ssm.delete_parameter(Name=name)
    ssm.put_parameter(Name=name, Type="String", Value='{"v": 3}')
    assert launch.settings_changed(name, "us-east-1") == 1


def test_an_unreadable_settings_parameter_restarts_nothing(settings_parameter, capsys):
    Path(launch.SETTINGS_FILE).write_text('{"v": 1}')
    assert launch.settings_changed("/ec2hub/no-such/settings", "us-east-1") is None
    assert "watch: GetParameter /ec2hub/no-such/settings: An error occurred (ParameterNotFound)" in capsys.readouterr().out


@pytest.fixture
def lease_table(aws, route53_zone):
    """The hub lease table in the AWS emulator (ec2spawner.lease's layout), with the hosted zone."""
    import time
    import uuid

    from ec2spawner.payloads import LEASE_KEY

    from .conftest import client

    dynamodb = client(aws, "dynamodb")
    name = f"ec2hub-lease-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": LEASE_KEY, "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": LEASE_KEY, "KeyType": "HASH"}])

    def hold(holder: str, for_s: float) -> None:
        dynamodb.put_item(TableName=name, Item={LEASE_KEY: {"S": "ec2hub-test"}, "holder": {"S": holder},
                                               "expires_at": {"N": f"{time.time() + for_s:.3f}"}})

    yield name, hold
    dynamodb.delete_table(TableName=name)


def lease_settings(zone_id: str, table: str):
    return dns_settings(zone_id).model_copy(update={"lease_table": table})


def test_a_new_host_leaves_the_name_with_the_hub_that_holds_the_lease(route53_zone, lease_table, capsys):
    """During a replacement the old hub holds the lease: the new host's start does not take the
    name from it (nor does an old hub restarting take it back from the new holder)."""
    r53, zone_id = route53_zone
    table, hold = lease_table
    settings = lease_settings(zone_id, table)
    assert launch.ensure_hub_record(settings, "10.0.1.5", "us-east-1", "i-old") is True  # no lease yet
    hold("i-old", 60)
    assert launch.ensure_hub_record(settings, "10.0.1.9", "us-east-1", "i-new") is False
    assert hub_record(r53, zone_id) == [("hub.ec2hub.internal.", 10, ["10.0.1.5"])]
    assert capsys.readouterr().out.splitlines()[-1] == (
        "ec2hub-hub: dns: hub.ec2hub.internal stays with i-old, which holds the hub lease: this host claims it "
        "once its hub takes the lease")
    # The holder's own restart claims it; an expired lease is nobody's.
    assert launch.ensure_hub_record(settings, "10.0.1.5", "us-east-1", "i-old") is True
    hold("i-old", -1)
    assert launch.ensure_hub_record(settings, "10.0.1.9", "us-east-1", "i-new") is True
    assert hub_record(r53, zone_id) == [("hub.ec2hub.internal.", 10, ["10.0.1.9"])]


def test_the_watcher_claims_the_name_once_its_hub_takes_the_lease(route53_zone, lease_table):
    r53, zone_id = route53_zone
    table, hold = lease_table
    settings = lease_settings(zone_id, table)
    launch.ensure_hub_record(settings, "10.0.1.5", "us-east-1", "i-old")  # the old hub's name
    hold("i-old", 60)
    assert launch.claim_name_with_lease(settings, "i-new", "10.0.1.9", "us-east-1", False) is False
    assert hub_record(r53, zone_id) == [("hub.ec2hub.internal.", 10, ["10.0.1.5"])]
    hold("i-new", 60)  # the old hub is gone; the new one took the lease
    assert launch.claim_name_with_lease(settings, "i-new", "10.0.1.9", "us-east-1", False) is True
    assert hub_record(r53, zone_id) == [("hub.ec2hub.internal.", 10, ["10.0.1.9"])]
    # Claimed once per holding: a later poll changes nothing, even if another host took the name back.
    launch.ensure_hub_record(settings.model_copy(update={"lease_table": None}), "10.0.1.5", "us-east-1")
    assert launch.claim_name_with_lease(settings, "i-new", "10.0.1.9", "us-east-1", True) is True
    assert hub_record(r53, zone_id) == [("hub.ec2hub.internal.", 10, ["10.0.1.5"])]
    # Losing the lease and taking it again claims it again.
    hold("i-old", 60)
    assert launch.claim_name_with_lease(settings, "i-new", "10.0.1.9", "us-east-1", True) is False
    hold("i-new", 60)
    assert launch.claim_name_with_lease(settings, "i-new", "10.0.1.9", "us-east-1", False) is True
    assert hub_record(r53, zone_id) == [("hub.ec2hub.internal.", 10, ["10.0.1.9"])]
