"""Spend: the price book (a real GetProducts answer's shape through botocore's Stubber: the
emulator has no Price List), the ledger's payloads, and the ledger against the emulator's DynamoDB:
every second billed exactly once by two hubs racing and by a hub that restarted, and the type
that really ran after a capacity fallback."""

from __future__ import annotations

import calendar
import json

import pytest
from botocore.stub import Stubber
from ec2spawner import spend
from ec2spawner.aws import Aws
from ec2spawner.spend import OPEN, PriceBook, SpendLedger
from spawner_testing import AZS, REGION

T0 = calendar.timegm((2026, 6, 10, 0, 0, 0))

# One entry of GetProducts' PriceList as the Price List serves it: a JSON document in a string
# (AWS Price List Query API, "GetProducts"; abridged to the fields a price is read from).
T3_MEDIUM = json.dumps({
    "product": {
        "productFamily": "Compute Instance",
        "attributes": {"instanceType": "t3.medium", "regionCode": "us-east-1", "tenancy": "Shared",
                       "operatingSystem": "Linux", "preInstalledSw": "NA", "capacitystatus": "Used",
                       "marketoption": "OnDemand", "operation": "RunInstances", "usagetype": "BoxUsage:t3.medium",
                       "location": "US East (N. Virginia)", "vcpu": "2", "memory": "4 GiB"},
        "sku": "A5V9YQVUZMY5XA83",
    },
    "serviceCode": "AmazonEC2",
    "terms": {
        "OnDemand": {"A5V9YQVUZMY5XA83.JRTCKXETXF": {
            "priceDimensions": {"A5V9YQVUZMY5XA83.JRTCKXETXF.6YS6EN2CT7": {
                "unit": "Hrs", "endRange": "Inf", "beginRange": "0", "appliesTo": [],
                "description": "$0.0416 per On Demand Linux t3.medium Instance Hour",
                "rateCode": "A5V9YQVUZMY5XA83.JRTCKXETXF.6YS6EN2CT7", "pricePerUnit": {"USD": "0.0416000000"}}},
            "sku": "A5V9YQVUZMY5XA83", "effectiveDate": "2026-11-01T00:00:00Z", "offerTermCode": "JRTCKXETXF",
            "termAttributes": {}}},
        "Reserved": {"A5V9YQVUZMY5XA83.38NPMPTW36": {
            "priceDimensions": {"A5V9YQVUZMY5XA83.38NPMPTW36.2TG2D8R56U": {
                "unit": "Quantity", "description": "Upfront Fee", "pricePerUnit": {"USD": "206"}}},
            "termAttributes": {"LeaseContractLength": "1yr", "PurchaseOption": "All Upfront"}}},
    },
    "version": "20261101000000",
    "publicationDate": "2026-11-01T00:00:00Z",
})


def test_month_segments_split_at_utc_month_boundaries():
    july = calendar.timegm((2026, 7, 1, 0, 0, 0))
    assert spend.month_segments(july - 60, july + 30) == [("2026-06", 60.0), ("2026-07", 30.0)]
    assert spend.month_segments(T0, T0) == []
    new_year = calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert spend.month_segments(new_year - 1, new_year + 1) == [("2026-12", 1.0), ("2027-01", 1.0)]
    assert spend.pricing_region("eu-west-1") == "eu-central-1"
    assert spend.pricing_region("ap-northeast-1") == "ap-south-1"
    assert spend.pricing_region("us-west-2") == "us-east-1"


def test_accrual_moves_the_mark_conditionally_and_adds_to_user_and_groups():
    items = spend.accrue_items(table="t", instance_id="i-1", since=T0, until=T0 + 1800, usd_per_hour=2.0,
                               user="alice", groups={"b", "a"}, close=True)
    month = {":usd": {"N": "1.000000"}, ":seconds": {"N": "1800.000"}}
    assert items == [
        {"Update": {"TableName": "t", "Key": {"subject": {"S": "instance#i-1"}, "month": {"S": "open"}},
                    "UpdateExpression": "SET accrued_until = :until, running = :no",
                    "ConditionExpression": "accrued_until = :since AND running = :yes",
                    "ExpressionAttributeValues": {":until": {"N": f"{T0 + 1800}.000"}, ":since": {"N": f"{T0}.000"},
                                                  ":yes": {"BOOL": True}, ":no": {"BOOL": False}}}},
        *({"Update": {"TableName": "t", "Key": {"subject": {"S": subject}, "month": {"S": "2026-06"}},
                      "UpdateExpression": "ADD usd :usd, seconds :seconds", "ExpressionAttributeValues": month}}
          for subject in ("user#alice", "group#a", "group#b")),
    ]


@pytest.mark.parametrize(("groups", "spent", "refused"), [
    (["research"], {"group#research": 5.0}, "research"),  # reaching the budget is enough
    (["research"], {"group#research": 4.99}, None),
    (["other", "research"], {"group#research": 9.0}, "research"),  # one group past it refuses
    (["other"], {"group#other": 1e6}, None),  # no budget, no limit
    ([], {}, None),
])
def test_over_budget(groups, spent, refused):
    found = spend.over_budget(groups, {"research": 5.0}, spent, "2026-06")
    assert (found.group if found else None) == refused


def test_refusal_message_names_group_budget_and_spend():
    assert spend.Refusal("gpu", 500.0, 512.345, "2026-06").message == (
        "Group 'gpu' has spent $512.35 of its $500.00 monthly budget for 2026-06, so new servers cannot start "
        "until next month. Ask an administrator to raise the budget.")


@pytest.fixture
def stubbed_pricing(monkeypatch):
    """The Price List endpoint's client behind botocore's Stubber (validated against its model)."""
    aws = Aws("us-east-1")
    monkeypatch.setitem(Aws._shared, "us-east-1", aws)
    stubber = Stubber(aws.client("pricing"))
    with stubber:
        yield stubber


async def test_on_demand_price_comes_from_get_products_once_a_day(stubbed_pricing):
    expected = {"ServiceCode": "AmazonEC2", "FormatVersion": "aws_v1", "MaxResults": 10,
                "Filters": spend.on_demand_filters(instance_type="t3.medium", region="us-east-1")}
    stubbed_pricing.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [T3_MEDIUM]}, expected)
    assert {f["Field"]: f["Value"] for f in expected["Filters"]} == {
        "instanceType": "t3.medium", "regionCode": "us-east-1", "tenancy": "Shared", "operatingSystem": "Linux",
        "preInstalledSw": "NA", "capacitystatus": "Used", "marketoption": "OnDemand", "operation": "RunInstances"}
    book = PriceBook("us-east-1")
    assert await book.hourly("t3.medium", "on-demand", fallback=9.0) == 0.0416
    # Cached: a second question sends nothing (the Stubber has no second answer and would fail).
    assert await book.hourly("t3.medium", "on-demand", fallback=9.0) == 0.0416
    stubbed_pricing.assert_no_pending_responses()


async def test_no_price_list_answer_means_the_catalog_figure(stubbed_pricing):
    stubbed_pricing.add_client_error("get_products", "AccessDeniedException", "not authorized", 400)
    book = PriceBook("us-east-1", retry=3600)
    assert await book.hourly("t3.medium", "on-demand", fallback=0.05) == 0.05
    assert await book.hourly("t3.medium", "on-demand", fallback=0.05) == 0.05  # not asked again for an hour
    assert await PriceBook("us-east-1", enabled=False).hourly("g5.xlarge", "on-demand", fallback=1.2) == 1.2
    stubbed_pricing.assert_no_pending_responses()


async def _answer(value):
    return value


async def test_two_hubs_and_a_restarted_hub_bill_every_second_once(emulator, table):
    hub_a, hub_b = SpendLedger(Aws.for_region(REGION), table), SpendLedger(Aws.for_region(REGION), table)
    await hub_a.open("i-1", now=T0, user="alice", server="", class_slug="small", instance_type="t3.medium",
                     az=AZS[0], market="on-demand")

    def bill(ledger, now, **kw):
        return ledger.accrue("i-1", now=now, user="alice", groups=["research"], price=lambda mark: 2.0, **kw)

    # Both hubs read the mark at T0, then both bill the hour: hub A's transaction wins, hub B's is
    # cancelled whole by its condition, and B reads the mark again and bills nothing. (Sequenced
    # by hand: the emulator's transactions are not isolated from each other as DynamoDB's are.)
    stale, fresh_read = await hub_b.mark("i-1"), hub_b.mark
    reads = [stale]
    hub_b.mark = lambda iid: _answer(reads.pop()) if reads else fresh_read(iid)
    assert await bill(hub_a, T0 + 3600) == 3600.0
    assert await bill(hub_b, T0 + 3600) == 0.0
    assert reads == []
    assert await hub_a.spent(["user#alice", "group#research"], "2026-06") == {"user#alice": 2.0,
                                                                               "group#research": 2.0}
    # A hub that starts afresh (nothing in memory) continues from the mark; closing ends billing.
    restarted = SpendLedger(Aws.for_region(REGION), table)
    assert await bill(restarted, T0 + 5400, close=True) == 1800.0
    assert await bill(restarted, T0 + 9000) == 0.0
    assert await restarted.spent(["user#alice", "user#bob"], "2026-06") == {"user#alice": 3.0, "user#bob": 0.0}
    assert (await restarted.mark("i-1"))["running"] is False


async def test_the_type_that_ran_after_a_capacity_fallback_is_billed(new_spawner, emu, table, monkeypatch):
    prices = {}

    async def hourly(self, instance_type, market, *, az="", fallback=None, timeout=5.0):
        prices[instance_type] = az
        return {"t3.medium": 1.0, "t3a.medium": 4.0}[instance_type]

    monkeypatch.setattr(PriceBook, "hourly", hourly)  # the Price List, which the emulator lacks
    for az in AZS:
        emu.add_capacity_fault(az, "t3.medium")
    clock = [T0]
    spawner = new_spawner("carol", groups=["research"], spend_table=table, spend_clock=lambda: clock[0])
    await spawner.start()
    iid = spawner.instance_id
    clock[0] = T0 + 900
    await spawner.stop()
    ledger = SpendLedger(Aws.for_region(REGION), table)
    mark = await ledger.mark(iid)
    assert (mark["instance_type"], mark["class_slug"], mark["accrued_until"], mark["running"]) == (
        "t3a.medium", "small", T0 + 900, False)
    assert prices == {"t3a.medium": mark["az"]}
    assert await ledger.spent(["user#carol", "group#research"], "2026-06") == {"user#carol": 1.0,
                                                                                "group#research": 1.0}
    assert (await ledger.mark(iid)) == mark and OPEN == "open"


async def test_admins_are_refused_past_a_budget_unless_exempt(new_spawner, emulator, table, live):
    from jupyterhub.spawner import SpawnException

    ledger = SpendLedger(Aws.for_region(REGION), table)
    await ledger.open("i-past", now=T0, user="dora", server="", class_slug="small", instance_type="t3.medium",
                      az=AZS[0], market="on-demand")
    await ledger.accrue("i-past", now=T0 + 7200, user="dora", groups=["gpu"], price=lambda mark: 1.0, close=True)

    def admin(**traits):
        spawner = new_spawner("dora", groups=["gpu"], spend_table=table, group_budgets_usd={"gpu": 2.0},
                              spend_clock=lambda: T0 + 7200, **traits)
        spawner.user.admin = True
        return spawner

    with pytest.raises(SpawnException) as info:
        await admin().start()
    assert (info.value.status_code, info.value.reason) == (403, "over-budget")
    assert info.value.message.startswith("Group 'gpu' has spent $2.00 of its $2.00 monthly budget for 2026-06")
    assert live("dora") == []
    exempt = admin(budget_exempt_admins=True)
    await exempt.check_budget()  # no refusal
    # Another group's budget does not apply to dora.
    await new_spawner("dora", groups=["gpu"], spend_table=table, group_budgets_usd={"other": 0.0},
                      spend_clock=lambda: T0 + 7200).check_budget()
