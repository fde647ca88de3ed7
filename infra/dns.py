"""The hub API's stable name: a Route 53 private hosted zone of the VPC and the one A record in it.

Notebook servers are told the hub API's URL once, when they start (``JUPYTERHUB_API_URL``, in their
secret). A replaced hub host has another private IP, so that URL names the record
``hub.<zone>`` instead, and the hub host UPSERTs it to its own private IP at every start of the
hub, before the hub starts (bootstrap/ec2hub_bootstrap/hub.py; docs/ARCHITECTURE.md §5).

The record is also in the template, with the hub instance's private IP: the value the hub writes
as long as CloudFormation's instance is the hub host. CloudFormation then deletes the record with
the stack (a hosted zone that still holds a record cannot be deleted), and changes it only when
that IP changes, that is when it replaces the instance, to the new host's IP.

:func:`record_statement` is the hub role's only Route 53 permission, built here beside the zone it
names; the Stack attaches it (grants live in the Stack).
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_route53 as route53
from constructs import Construct
from ec2spawner.settings import HUB_DNS_TTL_S

# The label of the hub API's record in the zone.
HUB_RECORD_LABEL = "hub"


def hub_record_name(zone_name: str) -> str:
    """The hub API's name in ``zone_name``, as Route 53 normalizes it (lower case, no final dot):
    the form the IAM condition ``route53:ChangeResourceRecordSetsNormalizedRecordNames`` compares."""
    return f"{HUB_RECORD_LABEL}.{zone_name.rstrip('.').lower()}"


class HubDns(Construct):
    """The private hosted zone, associated with the VPC (only the VPC resolves it), and the hub
    API's A record at ``hub_address`` (the hub instance's private IP)."""

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, zone_name: str, hub_address: str) -> None:
        super().__init__(scope, construct_id)
        self.zone = route53.PrivateHostedZone(
            self,
            "Zone",
            zone_name=zone_name,
            vpc=vpc,
            comment="ec2hub: the hub API's stable name (the hub host claims its record at every start)",
        )
        self.record_name = hub_record_name(zone_name)
        self.record = route53.ARecord(
            self,
            "HubApi",
            zone=self.zone,
            record_name=self.record_name + ".",
            target=route53.RecordTarget.from_ip_addresses(hub_address),
            ttl=Duration.seconds(HUB_DNS_TTL_S),
            comment="ec2hub: the hub API; the hub host UPSERTs it to its own address at every start",
        )


def record_statement(*, zone: route53.IHostedZone, record_name: str) -> iam.PolicyStatement:
    """UPSERT of the one A record, nothing else (Route 53 developer guide, "Using IAM policy
    conditions for fine-grained access control": the three condition keys hold every change of a
    request, so ``ForAllValues`` refuses a request if any of its changes is another name, type or
    action). No read: the hub does not wait for the change to be INSYNC (no ``route53:GetChange``),
    because nothing on the hub host resolves the name (docs/ARCHITECTURE.md §5)."""
    zone_arn = Stack.of(zone).format_arn(
        service="route53", region="", account="", resource="hostedzone", resource_name=zone.hosted_zone_id
    )
    return iam.PolicyStatement(
        sid="ClaimHubApiRecord",
        actions=["route53:ChangeResourceRecordSets"],
        resources=[zone_arn],
        conditions={
            "ForAllValues:StringEquals": {
                "route53:ChangeResourceRecordSetsNormalizedRecordNames": [record_name],
                "route53:ChangeResourceRecordSetsRecordTypes": ["A"],
                "route53:ChangeResourceRecordSetsActions": ["UPSERT"],
            }
        },
    )
