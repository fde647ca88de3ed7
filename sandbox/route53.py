"""The VPC's DNS answers the emulator's Route 53 private zones, as a VPC's resolver does on AWS.

moto keeps hosted zones and their records but resolves nothing. :class:`PrivateZoneFollower`
reads the A records of the stack's hosted zones (``ListResourceRecordSets``) every
:data:`INTERVAL_S` and hands them to the VPC's dnsmasq (:meth:`sandbox.netns.Vpc.set_dns_records`),
so a record the hub host UPSERTs at its start (the hub API's stable name, infra/dns.py) is what
every instance resolves about a second later. Route 53 itself answers a change within about a
minute (INSYNC), and a resolver caches an answer for its TTL.

Not emulated: moto's CloudFormation makes ``AWS::Route53::HostedZone`` a public zone and drops its
VPC association (every instance of the one sandbox VPC resolves it all the same); record types
other than A; aliases; weighted or failover routing.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

INTERVAL_S = 1.0


def a_records(route53, zone_id: str) -> dict[str, str]:
    """The zone's A records as name (without the final dot) -> its first address."""
    records: dict[str, str] = {}
    for page in route53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone_id):
        for record in page["ResourceRecordSets"]:
            if record["Type"] == "A" and record.get("ResourceRecords"):
                records[record["Name"].rstrip(".")] = record["ResourceRecords"][0]["Value"]
    return records


class PrivateZoneFollower:
    """A thread that keeps the VPC's DNS answering what the hosted zones ``zone_ids`` hold."""

    def __init__(self, route53, vpc, zone_ids: list[str]) -> None:
        self.route53, self.vpc, self.zone_ids = route53, vpc, list(zone_ids)
        self._served: dict[str, dict[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="route53-follower", daemon=True)

    def start(self) -> PrivateZoneFollower:
        self.sync()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def sync(self) -> None:
        """Read every zone once; give the VPC's DNS each zone whose records changed."""
        for zone_id in self.zone_ids:
            records = a_records(self.route53, zone_id)
            if records != self._served.get(zone_id):
                self.vpc.set_dns_records(f"route53-{zone_id}", records)
                self._served[zone_id] = records
                log.info("VPC DNS: hosted zone %s: %s", zone_id,
                         ", ".join(f"{n} A {a}" for n, a in sorted(records.items())) or "no A records")

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:
                self.sync()
            except Exception as error:  # noqa: BLE001 (an injected outage: the VPC keeps the last answers)
                log.debug("VPC DNS: reading the hosted zones failed: %s", error)
