"""Spend and budgets through a real JupyterHub (the ``hub`` fixture of test_spawner_hub.py) and the
AWS emulator's DynamoDB: a server's hours are billed to its user and groups, survive a hub
restart, a group past its budget is refused, and the form shows prices and the month's spend.

The hub bills by ``EC2Spawner.spend_clock``, which here reads a file the test writes: hours pass
in an instant, and every figure is exact.
"""

from __future__ import annotations

import calendar
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from ec2spawner.spend import OPEN, SPEND_KEY, SPEND_SORT
from spawner_testing import REGION
from test_spawner_hub import hub, play_instance  # noqa: F401 (the fixture)
from waiting import wait_until

pytestmark = pytest.mark.slow

TABLE = "spend-hub-test"
# Mid-month, so no accrual below crosses a month boundary.
T0 = calendar.timegm((2026, 6, 10, 0, 0, 0))
MONTH = "2026-06"
SMALL_USD_PER_HOUR = 2.0
BUDGET_USD = 5.0

CLOCKED = f"""
from pathlib import Path
# The hub runs in the test's directory; the test moves this clock (epoch seconds).
c.EC2Spawner.spend_clock = lambda: float(Path("clock").read_text()) if Path("clock").exists() else {T0}
c.EC2Spawner.spend_interval = 0.3
# The test's service also makes the group.
c.JupyterHub.load_roles[0]["scopes"] += ["admin:groups"]
# A loaded machine starts jupyterhub-singleuser slowly (start() waits for its answer).
c.EC2Spawner.start_timeout = 150
"""


def _settings(settings: dict) -> None:
    # The emulator has no Price List: the catalog's figure is the on-demand price.
    settings["classes"] = [{**c, "hourly_cost_usd": SMALL_USD_PER_HOUR} if c["slug"] == "small" else c
                           for c in settings["classes"]]
    settings.update(spend_table=TABLE, group_budgets_usd={"research": BUDGET_USD})


@pytest.fixture
def ledger(emulator):
    """The spend table as infra makes it (key subject, month), fresh per test."""
    import boto3

    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=emulator.endpoint_url)
    dynamodb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": SPEND_KEY, "KeyType": "HASH"},
                                     {"AttributeName": SPEND_SORT, "KeyType": "RANGE"}],
                          AttributeDefinitions=[{"AttributeName": SPEND_KEY, "AttributeType": "S"},
                                                {"AttributeName": SPEND_SORT, "AttributeType": "S"}])

    def item(subject, month=MONTH):
        found = dynamodb.get_item(TableName=TABLE, Key={SPEND_KEY: {"S": subject}, SPEND_SORT: {"S": month}},
                                  ConsistentRead=True).get("Item")
        return found and {k: float(v["N"]) if "N" in v else v.get("S", v.get("BOOL")) for k, v in found.items()}

    yield item
    dynamodb.delete_table(TableName=TABLE)


def _form(the_hub) -> str:
    """The spawn page as alice sees it, signed in through the login form (dummy authenticator)."""
    import requests as http

    base = f"http://127.0.0.1:{the_hub.ports['proxy']}/hub"
    browser = http.Session()
    browser.get(f"{base}/login", timeout=30)
    signed_in = browser.post(f"{base}/login", data={"username": "alice", "password": "any",
                                                   "_xsrf": browser.cookies.get("_xsrf")}, timeout=30)
    assert signed_in.ok, signed_in.text[:500]
    page = browser.get(f"{base}/spawn/alice", timeout=30)
    assert page.status_code == 200 and "/hub/login" not in page.url, page.text[:500]
    return re.sub(r"\s+", " ", page.content.decode("utf-8"))


@pytest.mark.parametrize("hub", [{"config": CLOCKED, "settings": _settings}], indirect=True)
def test_spend_accrues_survives_a_restart_and_a_group_past_its_budget_is_refused(ledger, hub, ssm, live):  # noqa: F811
    s, api = hub.session, hub.api
    clock = hub.tmp / "clock"
    clock.write_text(str(T0))
    assert s.post(f"{api}/users/alice").status_code == 201
    assert s.post(f"{api}/groups/research", json={"users": ["alice"]}).status_code == 201

    # The form: each class's hourly price (the catalog's for on-demand, the emulator's spot price
    # history for spot) and the month's spend, none yet.
    form = _form(hub)
    assert "(t3.medium) · $2/hour" in form
    assert "(t3.large) · $1e-05/hour" in form  # the emulator answers every spot price with 0.00001
    assert f"Your spend in {MONTH}: <strong>$0.00</strong>" in form
    assert "Group research: $0.00 of its $5.00 monthly budget" in form

    with ThreadPoolExecutor(1) as pool:
        instance = pool.submit(play_instance, hub, ssm, hub.tmp / "singleuser.log")
        started = s.post(f"{api}/users/alice/server", json={"user_options": {"instance_class": "small"}})
        notebook = instance.result()
    assert started.status_code in (201, 202)
    try:
        def ready():
            return (s.get(f"{api}/users/alice").json()["servers"].get("") or {}).get("ready")

        wait_until(ready, 150, "the server to be ready")
        [running] = live("alice")
        mark = ledger(f"instance#{running['InstanceId']}", OPEN)
        assert (mark["accrued_until"], mark["running"], mark["instance_type"], mark["user"]) == (
            T0, True, "t3.medium", "alice")

        # One hour later the accrual task has billed one hour to alice and to her group.
        clock.write_text(str(T0 + 3600))
        wait_until(lambda: (ledger("user#alice") or {}).get("usd") == 2.0, 30, "one hour billed")
        assert ledger("group#research") == {SPEND_KEY: "group#research", SPEND_SORT: MONTH,
                                            "usd": 2.0, "seconds": 3600.0}

        # A hub restart loses nothing and bills nothing twice: the mark is in DynamoDB.
        hub.restart()
        wait_until(ready, 30, "the server to be ready after the hub restart")
        clock.write_text(str(T0 + 7200))
        wait_until(lambda: ledger("user#alice")["usd"] == 4.0, 30, "the second hour billed")

        # Stopping bills the last stretch and closes the mark.
        clock.write_text(str(T0 + 3 * 3600))
        assert s.delete(f"{api}/users/alice/server").status_code in (202, 204)
        wait_until(lambda: not s.get(f"{api}/users/alice").json()["servers"], 30, "the server to stop")
    finally:
        notebook.terminate()
        notebook.wait(10)
    assert ledger("user#alice")["usd"] == 6.0
    assert ledger("group#research")["seconds"] == 3 * 3600.0
    assert ledger(f"instance#{running['InstanceId']}", OPEN)["running"] is False

    # $6 of a $5 budget: refused before anything launches, saying why.
    clock.write_text(str(T0 + 4 * 3600))
    refused = s.post(f"{api}/users/alice/server", json={"user_options": {"instance_class": "small"}})
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        "Group 'research' has spent $6.00 of its $5.00 monthly budget for 2026-06, so new servers cannot "
        "start until next month. Ask an administrator to raise the budget.")
    assert live("alice") == []
    assert ledger("user#alice")["usd"] == 6.0  # a stopped server costs nothing more

    form = _form(hub)
    assert f"Your spend in {MONTH}: <strong>$6.00</strong>" in form
    assert "Group research: $6.00 of its $5.00 monthly budget" in form
