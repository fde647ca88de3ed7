"""Logs and alarms: the hub's and the notebooks' logs in CloudWatch Logs, and alarms on them.

Two log groups, ``/ec2hub/<hub_id>/hub`` and ``/ec2hub/<hub_id>/notebook``, encrypted with the
stack's log key and kept ``retention_days``; each host's bootstrap ships its unit's journal there
(bootstrap/common/logs.sh; docs/ARCHITECTURE.md §16). The names are derived from the hub id, the
one input every host already has, so no new tag or setting carries them.

Metric filters on the hub's group count the two log lines the spawner writes for that purpose
(``ec2spawner.metrics.SPAWN_FAILED_MARK`` and ``ORPHAN_MARK``), in the namespace
``ec2hub/<hub_id>``; an alarm watches each. With ``alarm_email`` the alarms notify an SNS topic
(encrypted with its own key, which CloudWatch may use) that mails that address.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct
from ec2spawner.metrics import ORPHAN_MARK, SPAWN_FAILED_MARK

from .config import LOG_RETENTION_DAYS

# Which host writes which group (the bootstrap names them the same way: log_group_name there).
LOG_ROLES = ("hub", "notebook")

# A burst of failures, not one: a capacity refusal or a user's cancelled spawn is a failure too.
SPAWN_FAILURE_THRESHOLD = 3
SPAWN_FAILURE_PERIOD = Duration.minutes(15)
# The sweeper terminates an orphan at most one sweep (5 minutes) after its grace: any is news.
ORPHAN_PERIOD = Duration.minutes(5)


# jsii's RetentionDays members are names (THREE_MONTHS), declared in the order of the periods.
_RETENTION = dict(zip(LOG_RETENTION_DAYS, [d for d in logs.RetentionDays if d.name != "INFINITE"], strict=True))


def log_group_name(hub_id: str, role: str) -> str:
    """The log group of one host role (``hub`` or ``notebook``) of a hub."""
    return f"/ec2hub/{hub_id}/{role}"


def metric_namespace(hub_id: str) -> str:
    return f"ec2hub/{hub_id}"


class Observability(Construct):
    """The log groups, their metric filters, the alarms and (optionally) the alarm topic."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        hub_id: str,
        log_key: kms.IKey,
        retention_days: int,
        alarm_email: str | None,
    ) -> None:
        super().__init__(scope, construct_id)
        # Named by the hub id (the bootstrap derives the same names), so they go with the stack:
        # a retained group would make the next stack of the same hub id fail to create it.
        self.log_groups = {
            role: logs.LogGroup(
                self,
                f"{role.capitalize()}Logs",
                log_group_name=log_group_name(hub_id, role),
                encryption_key=log_key,
                retention=_RETENTION[retention_days],
                removal_policy=RemovalPolicy.DESTROY,
            )
            for role in LOG_ROLES
        }
        namespace = metric_namespace(hub_id)
        hub_logs = self.log_groups["hub"]

        def count_of(filter_id: str, mark: str, metric_name: str, period: Duration) -> cloudwatch.Metric:
            """The number of hub log lines containing ``mark`` per ``period`` (0 when none)."""
            return logs.MetricFilter(
                self,
                filter_id,
                log_group=hub_logs,
                filter_pattern=logs.FilterPattern.literal(f'"{mark}"'),
                metric_namespace=namespace,
                metric_name=metric_name,
                metric_value="1",
                default_value=0,
            ).metric(statistic="Sum", period=period)

        spawn_failures = count_of("SpawnFailures", SPAWN_FAILED_MARK, "SpawnFailures", SPAWN_FAILURE_PERIOD)
        orphans = count_of("OrphansFound", ORPHAN_MARK, "OrphansTerminated", ORPHAN_PERIOD)
        self.alarms = {
            "spawn_failures": spawn_failures.create_alarm(
                self,
                "SpawnFailureAlarm",
                alarm_description=f"ec2hub {hub_id}: {SPAWN_FAILURE_THRESHOLD} or more server starts "
                f"failed within {SPAWN_FAILURE_PERIOD.to_minutes()} minutes (hub log lines "
                f"'{SPAWN_FAILED_MARK}' give class and reason)",
                threshold=SPAWN_FAILURE_THRESHOLD,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "orphans": orphans.create_alarm(
                self,
                "OrphanAlarm",
                alarm_description=f"ec2hub {hub_id}: the sweeper found a notebook instance running "
                f"with no server owning it and terminated it (hub log lines '{ORPHAN_MARK}')",
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
        }

        self.topic: sns.Topic | None = None
        if alarm_email:
            # CloudWatch cannot publish to a topic under the AWS-managed aws/sns key; a key of its
            # own lets exactly the CloudWatch service use it (SNS developer guide, "Configure KMS
            # permissions for AWS services").
            key = kms.Key(
                self,
                "AlarmTopicKey",
                description=f"ec2hub {hub_id}: encrypts the alarm topic",
                enable_key_rotation=True,
                removal_policy=RemovalPolicy.DESTROY,
            )
            key.add_to_resource_policy(
                iam.PolicyStatement(
                    principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                    actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                    resources=["*"],
                )
            )
            self.topic = sns.Topic(
                self,
                "AlarmTopic",
                display_name=f"ec2hub {hub_id} alarms",
                master_key=key,
                enforce_ssl=True,
            )
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
            for alarm in self.alarms.values():
                alarm.add_alarm_action(actions.SnsAction(self.topic))
