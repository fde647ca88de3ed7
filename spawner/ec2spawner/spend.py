"""Spend: what each user's and group's servers cost this month, and the groups' monthly budgets.

**Prices** (:class:`PriceBook`, one per hub process and event loop). On-demand: the AWS Price List
(Pricing ``GetProducts``, served only from a few regions: :func:`pricing_region`), filtered to the
instance type, the hub's region, shared tenancy, Linux with no pre-installed software, and the
on-demand market. Spot: EC2 ``DescribeSpotPriceHistory`` in the hub's region (the newest price of
each AZ). Each answer is kept for ``ttl`` seconds (a day), a failure for ``retry`` seconds (an
hour), so there is at most one call per type per day, made off every hot path (the accrual task
and the form; never ``poll()``). When the Price List cannot be asked (no route, no permission, an
emulator that lacks it), the catalog's ``hourly_cost_usd`` is the price.

**The ledger** (:class:`SpendLedger`) is a DynamoDB table (the stack makes it; settings
``spend_table``) with key (``subject``, ``month``):

- ``user#<name>`` / ``group#<name>``, month ``YYYY-MM`` (UTC): ``usd`` and ``seconds``, only ever
  increased with DynamoDB's atomic ``ADD``;
- ``instance#<id>``, month ``open``: the instance's billing mark ``accrued_until`` (epoch
  seconds), whether it is ``running``, and what it is (user, server, class, the type that really
  ran after a capacity fallback, AZ, market).

A server's instance is *opened* when ``start()`` sees it running (mark = now), *accrued* every
``spend_interval`` while it runs (:class:`SpendRecorder`), and *closed* when it is stopped or
found ended. Each accrual is one ``TransactWriteItems``: move the mark from its old value to now
(conditional on the old value) and ``ADD`` the time and its cost to the user's item and to each of
the user's groups' items, split at month boundaries. So a hub restart, a replaced hub, or two hubs
at once during a replacement count every second exactly once: a lost race is cancelled whole and
re-read. What the stack does not see: EBS storage, data transfer, and time between the hub's
last accrual and a crash of both hub and instance (the mark stays; nobody closes it).

Budgets: a group's spend this month is its ``group#`` item; :func:`over_budget` says which of a
user's groups has reached its budget, and the spawner refuses new servers for that user.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from .aws import Aws, AwsError
from .loops import PerLoop

log = logging.getLogger(__name__)

SPEND_KEY = "subject"
SPEND_SORT = "month"
OPEN = "open"  # the sort key of an instance's billing mark

# Where the Price List is served (AWS Price List Query API: us-east-1, eu-central-1, ap-south-1).
_PRICING_REGIONS = {"ap": "ap-south-1", "eu": "eu-central-1", "me": "eu-central-1", "af": "eu-central-1",
                    "il": "eu-central-1"}


def pricing_region(region: str) -> str:
    """The Price List endpoint closest to ``region`` (any of them answers for every region)."""
    return _PRICING_REGIONS.get(region.split("-", 1)[0], "us-east-1")


def month_of(t: float) -> str:
    """``YYYY-MM`` of epoch seconds ``t``, in UTC."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m")


def month_segments(start: float, end: float) -> list[tuple[str, float]]:
    """(month, seconds) of ``[start, end)``, split at UTC month boundaries; empty if end <= start."""
    segments = []
    while start < end:
        day = datetime.fromtimestamp(start, UTC)
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        boundary = calendar.timegm((year, month, 1, 0, 0, 0))
        stop = min(end, boundary)
        segments.append((day.strftime("%Y-%m"), stop - start))
        start = stop
    return segments


# -- prices ------------------------------------------------------------------------------------

def on_demand_filters(*, instance_type: str, region: str) -> list[dict]:
    """GetProducts filters for one Linux on-demand price of ``instance_type`` in ``region``.

    ``operation`` RunInstances is Linux/UNIX with no SQL Server or other licensed software, and
    ``capacitystatus`` Used excludes the reservation-only rows (Price List attribute names as
    ``DescribeServices(ServiceCode="AmazonEC2")`` lists them).
    """
    terms = {
        "instanceType": instance_type,
        "regionCode": region,
        "tenancy": "Shared",
        "operatingSystem": "Linux",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "marketoption": "OnDemand",
        "operation": "RunInstances",
    }
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in terms.items()]


def parse_on_demand(price_list: Iterable[str | dict]) -> float | None:
    """USD per hour from GetProducts' ``PriceList`` (each entry a JSON document as a string).

    The hourly ``OnDemand`` price dimensions; if the filters matched products with different
    prices, the highest (a budget would rather overcount). None if there is no hourly USD price.
    """
    prices = set()
    for entry in price_list:
        product = json.loads(entry) if isinstance(entry, str) else entry
        for term in (product.get("terms", {}).get("OnDemand") or {}).values():
            for dimension in (term.get("priceDimensions") or {}).values():
                usd = (dimension.get("pricePerUnit") or {}).get("USD")
                if dimension.get("unit") == "Hrs" and usd is not None and float(usd) > 0:
                    prices.add(float(usd))
    return max(prices) if prices else None


def spot_history_params(*, instance_type: str, now: float) -> dict:
    """DescribeSpotPriceHistory of Linux prices of ``instance_type`` now (the newest per AZ)."""
    return {"InstanceTypes": [instance_type], "ProductDescriptions": ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
            "StartTime": datetime.fromtimestamp(now, UTC)}


def parse_spot(history: Iterable[dict]) -> dict[str, float]:
    """AZ -> the newest spot price in ``SpotPriceHistory``."""
    newest: dict[str, tuple[str, float]] = {}
    for row in history:
        az, when, price = row.get("AvailabilityZone", ""), str(row.get("Timestamp", "")), float(row["SpotPrice"])
        if az not in newest or when > newest[az][0]:
            newest[az] = (when, price)
    return {az: price for az, (_, price) in newest.items()}


@dataclass
class _Entry:
    task: asyncio.Task
    asked_at: float


class PriceBook:
    """Hourly prices per instance type and market for one region, cached (see the module)."""

    _registry: ClassVar[PerLoop[PriceBook]] = PerLoop()

    def __init__(self, region: str, *, ttl: float = 86400.0, retry: float = 3600.0, enabled: bool = True,
                 logger: logging.Logger | None = None):
        self.region = region
        self.ttl = ttl
        self.retry = retry
        self.enabled = enabled
        self.log = logger or log
        self._entries: dict[tuple[str, str], _Entry] = {}

    @classmethod
    def for_region(cls, region: str, **kwargs) -> PriceBook:
        """The running loop's price book of ``region`` (the first caller's settings win)."""
        return cls._registry.get_or_create(region, lambda: cls(region, **kwargs))[0]

    async def hourly(self, instance_type: str, market: str, *, az: str = "", fallback: float | None = None,
                     timeout: float = 5.0) -> float | None:
        """USD per hour: AWS's price when known, else ``fallback`` (the catalog's figure).

        Waits at most ``timeout`` seconds for an answer not cached yet; the question keeps
        running and its answer is cached for the next caller. A spot price is the one of ``az``,
        or the highest of the region's AZs when ``az`` is not known.
        """
        if not self.enabled:
            return fallback
        entry = self.warm(instance_type, market)
        try:
            answer = await asyncio.wait_for(asyncio.shield(entry.task), timeout)
        except Exception:  # noqa: BLE001 (logged once by _ask; the catalog's figure stands in)
            return fallback
        if answer is None:
            return fallback
        if isinstance(answer, dict):
            return answer.get(az) if az in answer else max(answer.values())
        return answer

    def warm(self, instance_type: str, market: str) -> _Entry:
        """Ask for the price now unless it is cached (or being asked); do not wait for it."""
        key = (instance_type, market)
        entry = self._entries.get(key)
        now = time.time()
        if entry is not None and entry.task.done():
            good = entry.task.exception() is None and entry.task.result() is not None
            if now - entry.asked_at > (self.ttl if good else self.retry):
                entry = None
        if entry is None:
            entry = _Entry(asyncio.get_running_loop().create_task(self._ask(instance_type, market)), now)
            self._entries[key] = entry
        return entry

    async def _ask(self, instance_type: str, market: str) -> float | dict[str, float] | None:
        try:
            if market == "spot":
                page = await Aws.for_region(self.region).call(
                    "ec2", "DescribeSpotPriceHistory", **spot_history_params(instance_type=instance_type,
                                                                               now=time.time()))
                return parse_spot(page.get("SpotPriceHistory", [])) or None
            page = await Aws.for_region(pricing_region(self.region)).call(
                "pricing", "GetProducts", ServiceCode="AmazonEC2", FormatVersion="aws_v1", MaxResults=10,
                Filters=on_demand_filters(instance_type=instance_type, region=self.region))
            return parse_on_demand(page.get("PriceList", []))
        except Exception as error:
            self.log.warning("ec2hub spend: no AWS price for %s (%s) in %s (%s); using the catalog's figure",
                             instance_type, market, self.region, error or type(error).__name__)
            raise


# -- the ledger: DynamoDB payloads (pure) -------------------------------------------------------

def _key(subject: str, month: str) -> dict:
    return {SPEND_KEY: {"S": subject}, SPEND_SORT: {"S": month}}


def user_subject(user: str) -> str:
    return f"user#{user}"


def group_subject(group: str) -> str:
    return f"group#{group}"


def instance_subject(instance_id: str) -> str:
    return f"instance#{instance_id}"


def open_params(*, table: str, instance_id: str, now: float, user: str, server: str, class_slug: str,
                instance_type: str, az: str, market: str) -> dict:
    """UpdateItem that starts the billing of a running instance at ``now`` (also for a resumed
    one: the time it was stopped is not billed)."""
    return {
        "TableName": table,
        "Key": _key(instance_subject(instance_id), OPEN),
        "UpdateExpression": ("SET accrued_until = :now, running = :yes, #user = :user, #server = :server, "
                             "class_slug = :class, instance_type = :type, az = :az, market = :market"),
        "ExpressionAttributeNames": {"#user": "user", "#server": "server"},
        "ExpressionAttributeValues": {
            ":now": {"N": f"{now:.3f}"}, ":yes": {"BOOL": True}, ":user": {"S": user}, ":server": {"S": server},
            ":class": {"S": class_slug}, ":type": {"S": instance_type}, ":az": {"S": az}, ":market": {"S": market},
        },
    }


def mark_read_params(*, table: str, instance_id: str) -> dict:
    return {"TableName": table, "Key": _key(instance_subject(instance_id), OPEN), "ConsistentRead": True}


def accrue_items(*, table: str, instance_id: str, since: float, until: float, usd_per_hour: float,
                 user: str, groups: Iterable[str], close: bool = False) -> list[dict]:
    """TransactWriteItems that bills ``[since, until)`` once: the mark moves from ``since`` to
    ``until`` only if it still is ``since``, and the user's and each group's month items grow."""
    mark = {
        "TableName": table,
        "Key": _key(instance_subject(instance_id), OPEN),
        "UpdateExpression": "SET accrued_until = :until" + (", running = :no" if close else ""),
        "ConditionExpression": "accrued_until = :since AND running = :yes",
        "ExpressionAttributeValues": {":until": {"N": f"{until:.3f}"}, ":since": {"N": f"{since:.3f}"},
                                      ":yes": {"BOOL": True}, **({":no": {"BOOL": False}} if close else {})},
    }
    items = [{"Update": mark}]
    subjects = [user_subject(user), *(group_subject(g) for g in sorted(set(groups)))]
    for month, seconds in month_segments(since, until):
        cost = seconds / 3600 * usd_per_hour
        for subject in subjects:
            items.append({"Update": {
                "TableName": table,
                "Key": _key(subject, month),
                "UpdateExpression": "ADD usd :usd, seconds :seconds",
                "ExpressionAttributeValues": {":usd": {"N": f"{cost:.6f}"}, ":seconds": {"N": f"{seconds:.3f}"}},
            }})
    return items


def spend_read_params(*, table: str, subjects: Iterable[str], month: str) -> dict:
    """BatchGetItem of the month items of ``subjects`` (at most 100)."""
    return {"RequestItems": {table: {"Keys": [_key(s, month) for s in dict.fromkeys(subjects)],
                                     "ConsistentRead": True}}}


@dataclass(frozen=True)
class Refusal:
    """A group that has reached its monthly budget."""

    group: str
    budget_usd: float
    spent_usd: float
    month: str

    @property
    def message(self) -> str:
        return (f"Group {self.group!r} has spent ${self.spent_usd:.2f} of its ${self.budget_usd:.2f} monthly "
                f"budget for {self.month}, so new servers cannot start until next month. Ask an "
                "administrator to raise the budget.")


def over_budget(groups: Iterable[str], budgets: Mapping[str, float], spent: Mapping[str, float],
                month: str) -> Refusal | None:
    """The first (by name) of ``groups`` whose spend this month reached its budget, or None."""
    for group in sorted(set(groups)):
        if group in budgets and spent.get(group_subject(group), 0.0) >= budgets[group]:
            return Refusal(group, budgets[group], spent.get(group_subject(group), 0.0), month)
    return None


class SpendLedger:
    """The spend table of one hub (see the module); every call through the AWS seam.

    Within one hub process the accruals of one instance take turns (the accrual task and a
    ``stop()`` often meet), so its transactions only race another hub's.
    """

    _turns: ClassVar[PerLoop[asyncio.Lock]] = PerLoop()

    def __init__(self, aws: Aws, table: str, *, logger: logging.Logger | None = None):
        self.aws = aws
        self.table = table
        self.log = logger or log

    async def open(self, instance_id: str, *, now: float, **what: str) -> None:
        await self.aws.call("dynamodb", "UpdateItem", **open_params(table=self.table, instance_id=instance_id,
                                                                     now=now, **what))

    async def mark(self, instance_id: str) -> dict | None:
        """The instance's billing mark as plain values, or None if it has none."""
        answer = await self.aws.call("dynamodb", "GetItem", **mark_read_params(table=self.table,
                                                                                instance_id=instance_id))
        item = (answer or {}).get("Item")
        if not item:
            return None
        return {k: (float(v["N"]) if "N" in v else v.get("S", v.get("BOOL"))) for k, v in item.items()}

    async def accrue(self, instance_id: str, *, now: float, user: str, groups: Iterable[str],
                     price: Callable[[dict], asyncio.Future | float | None], close: bool = False,
                     attempts: int = 3) -> float:
        """Bill the instance up to ``now`` (and close its mark if ``close``); return the seconds billed.

        ``price(mark)`` gives USD per hour for what the mark says ran (None: unknown, billed at 0
        with the seconds still counted). A mark that is missing or closed bills nothing. A lost
        race (another hub billed meanwhile) is read again, at most ``attempts`` times.
        """
        turn, _ = self._turns.get_or_create((self.table, instance_id), asyncio.Lock)
        async with turn:
            billed = await self._accrue(instance_id, now=now, user=user, groups=list(groups), price=price,
                                        close=close, attempts=attempts)
        if close:
            self._turns.discard((self.table, instance_id))
        return billed

    async def _accrue(self, instance_id, *, now, user, groups, price, close, attempts) -> float:
        for _ in range(attempts):
            mark = await self.mark(instance_id)
            if mark is None or not mark.get("running"):
                return 0.0
            since = mark["accrued_until"]
            until = max(now, since)
            rate = price(mark)
            if asyncio.iscoroutine(rate) or isinstance(rate, asyncio.Future):
                rate = await rate
            items = accrue_items(table=self.table, instance_id=instance_id, since=since, until=until,
                                 usd_per_hour=rate or 0.0, user=user, groups=groups, close=close)
            try:
                await self.aws.call("dynamodb", "TransactWriteItems", TransactItems=items)
            except AwsError as error:
                if error.code == "TransactionCanceledException":
                    continue  # someone moved the mark: read it again
                raise
            return until - since
        self.log.warning("ec2hub spend: %s: billing mark kept moving; left for the next accrual", instance_id)
        return 0.0

    async def spent(self, subjects: Iterable[str], month: str) -> dict[str, float]:
        """Subject -> USD spent in ``month`` (0 for a subject with no item)."""
        subjects = list(dict.fromkeys(subjects))
        found = {s: 0.0 for s in subjects}
        if not subjects:
            return found
        request = spend_read_params(table=self.table, subjects=subjects, month=month)["RequestItems"]
        while request:
            answer = await self.aws.call("dynamodb", "BatchGetItem", RequestItems=request) or {}
            for item in answer.get("Responses", {}).get(self.table, []):
                found[item[SPEND_KEY]["S"]] = float(item.get("usd", {}).get("N", "0"))
            request = answer.get("UnprocessedKeys") or {}
        return found


class SpendRecorder:
    """Every ``interval`` seconds, bill the running servers of one hub (per event loop).

    ``running()`` yields the spawners to bill now; each has ``accrue_spend()``. Errors are logged
    and the next round tries again: the mark in DynamoDB says where billing stopped.
    """

    _registry: ClassVar[PerLoop[SpendRecorder]] = PerLoop()

    def __init__(self, running: Callable[[], Iterable], *, interval: float, logger: logging.Logger | None = None):
        self.running = running
        self.interval = interval
        self.log = logger or log
        self.rounds = 0
        self._task: asyncio.Task | None = None

    @classmethod
    def ensure(cls, key, running: Callable[[], Iterable], *, interval: float, logger=None) -> SpendRecorder:
        recorder, created = cls._registry.get_or_create(key, lambda: cls(running, interval=interval,
                                                                           logger=logger))
        if created:
            recorder._task = asyncio.get_running_loop().create_task(recorder._run(), name=f"ec2hub-spend-{key}")
        return recorder

    async def record_once(self) -> None:
        for spawner in list(self.running()):
            try:
                await spawner.accrue_spend()
            except Exception:
                self.log.exception("ec2hub spend: accrual of %s failed; the next round retries",
                                   getattr(spawner, "_log_name", spawner))
        self.rounds += 1

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.record_once()

    @classmethod
    async def stop_all(cls) -> None:
        for recorder in cls._registry.pop_all():
            if recorder._task is not None:
                recorder._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await recorder._task
