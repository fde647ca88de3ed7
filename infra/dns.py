"""The hub API's stable name: a Route 53 private hosted zone of the VPC and the one A record in it.

Notebook servers are told the hub API's URL once, when they start (``JUPYTERHUB_API_URL``, in their
secret). A replaced hub host has another private IP, so that URL names the record
``hub.<zone>`` instead, and the hub host UPSERTs it to its own private IP at every start of the
hub, before the hub starts (bootstrap/ec2hub_bootstrap/hub.py; docs/ARCHITECTURE.md §5).

The record is not in the template: the hub host is an Auto Scaling group's instance, whose address
nobody knows at synth, and a template record CloudFormation later deleted with a value the hub had
since changed would fail the delete (Route 53 deletes only a record given with its current values).
So the record is the hub's alone, and ``cdk destroy`` needs it gone first: a hosted zone that still
holds a record cannot be deleted. The stack's ``DeleteHubRecordCommand`` output is that step
(docs/DEPLOY.md, "Deleting the stack").

:func:`record_statement` is the hub role's only Route 53 permission, built here beside the zone it
names; the Stack attaches it (grants live in the Stack).
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_route53 as route53
from constructs import Construct

# The label of the hub API's record in the zone.
HUB_RECORD_LABEL = "hub"


def hub_record_name(zone_name: str) -> str:
    """The hub API's name in ``zone_name``, as Route 53 normalizes it (lower case, no final dot):
    the form the IAM condition ``route53:ChangeResourceRecordSetsNormalizedRecordNames`` compares."""
    return f"{HUB_RECORD_LABEL}.{zone_name.rstrip('.').lower()}"


class HubDns(Construct):
    """The private hosted zone, associated with the VPC (only the VPC resolves it); the hub host
    makes the hub API's A record in it (:attr:`record_name`)."""

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, zone_name: str) -> None:
        super().__init__(scope, construct_id)
        self.zone = route53.PrivateHostedZone(
            self,
            "Zone",
            zone_name=zone_name,
            vpc=vpc,
            comment="ec2hub: the hub API's stable name (the hub host claims its record at every start)",
        )
        self.record_name = hub_record_name(zone_name)

def delete_record_command(*, zone_id: str, record_name: str, region: str) -> str:
    """The AWS CLI command that deletes the hub's record, whatever address it holds now: it reads
    the record first (a DELETE must give the current values, Route 53 API reference,
    ChangeResourceRecordSets) and turns it into the ChangeBatch with a JMESPath query. Run before
    ``cdk destroy``; a zone without the record is an empty batch, which Route 53 refuses."""
    name = record_name + "."
    query = f"{{Changes:ResourceRecordSets[?Name=='{name}' && Type=='A'].{{Action:'DELETE',ResourceRecordSet:@}}}}"
    return (
        f"aws route53 change-resource-record-sets --region {region} --hosted-zone-id {zone_id} --change-batch "
        f'"$(aws route53 list-resource-record-sets --region {region} --hosted-zone-id {zone_id} '
        f'--query "{query}" --output json)"'
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
