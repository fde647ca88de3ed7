"""Logs and alarms (infra/observability.py): the log groups, what each role may write, the metric
filters on the spawner's contract log lines, the alarms and the optional alarm topic."""

from __future__ import annotations

import sys

from aws_cdk.assertions import Match
from ec2spawner.metrics import ORPHAN_MARK, SPAWN_FAILED_MARK
from infra_testing import REPO, logical_id_by_description

from infra.observability import log_group_name

LOG_KEY = "encrypts the log groups"


def test_log_groups_are_encrypted_and_kept_for_the_retention(any_synth):
    hub_id = any_synth.context.get("hub_id", "ec2hub")
    key = logical_id_by_description(any_synth, "AWS::KMS::Key", LOG_KEY)
    days = int(any_synth.context.get("log_retention_days", 90))
    for role in ("hub", "notebook"):
        any_synth.assertions.has_resource_properties("AWS::Logs::LogGroup", {
            "LogGroupName": f"/ec2hub/{hub_id}/{role}",
            "KmsKeyId": {"Fn::GetAtt": [key, "Arn"]},
            "RetentionInDays": days,
        })


def test_each_role_writes_only_its_own_log_group(default_synth):
    groups = {
        v["Properties"]["LogGroupName"]: k for k, v in default_synth.resources("AWS::Logs::LogGroup").items()
        if "LogGroupName" in v["Properties"]
    }
    for role, group in (("hub", "/ec2hub/ec2hub/hub"), ("notebook", "/ec2hub/ec2hub/notebook")):
        statements = [
            s for policy in default_synth.resources("AWS::IAM::Policy").values()
            if any(role in r["Ref"].lower() for r in policy["Properties"]["Roles"])
            for s in policy["Properties"]["PolicyDocument"]["Statement"]
            if any(str(a).startswith("logs:") for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))
        ]
        assert statements == [{
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [groups[group], "Arn"]},
        }], role


def test_alarms_count_the_spawners_log_lines(any_synth):
    hub_id = any_synth.context.get("hub_id", "ec2hub")
    for mark, metric in ((SPAWN_FAILED_MARK, "SpawnFailures"), (ORPHAN_MARK, "OrphansTerminated")):
        any_synth.assertions.has_resource_properties("AWS::Logs::MetricFilter", {
            "FilterPattern": f'"{mark}"',
            "MetricTransformations": [{"MetricNamespace": f"ec2hub/{hub_id}", "MetricName": metric,
                                       "MetricValue": "1", "DefaultValue": 0}],
        })
    any_synth.assertions.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "SpawnFailures", "Namespace": f"ec2hub/{hub_id}", "Statistic": "Sum", "Period": 900,
        "Threshold": 3, "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "notBreaching",
    })
    any_synth.assertions.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "OrphansTerminated", "Namespace": f"ec2hub/{hub_id}", "Statistic": "Sum", "Period": 300,
        "Threshold": 1, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
    })


def test_no_alarm_topic_unless_an_email_is_given(default_synth):
    assert default_synth.resources("AWS::SNS::Topic") == {}
    for alarm in default_synth.resources("AWS::CloudWatch::Alarm").values():
        assert "AlarmActions" not in alarm["Properties"]


def test_alarm_email_gets_an_encrypted_topic_the_alarms_notify(full_synth):
    [topic] = full_synth.resources("AWS::SNS::Topic")
    key = logical_id_by_description(full_synth, "AWS::KMS::Key", "encrypts the alarm topic")
    full_synth.assertions.has_resource_properties("AWS::SNS::Topic", {
        "KmsMasterKeyId": {"Fn::GetAtt": [key, "Arn"]}})
    full_synth.assertions.has_resource_properties("AWS::SNS::Subscription", {
        "Protocol": "email", "Endpoint": "ops@example.org", "TopicArn": {"Ref": topic}})
    full_synth.assertions.has_resource_properties("AWS::KMS::Key", {"KeyPolicy": {"Statement": Match.array_with([
        Match.object_like({"Principal": {"Service": "cloudwatch.amazonaws.com"},
                           "Action": ["kms:Decrypt", "kms:GenerateDataKey*"]})])}})
    alarms = full_synth.resources("AWS::CloudWatch::Alarm").values()
    assert [a["Properties"]["AlarmActions"] for a in alarms] == [[{"Ref": topic}]] * 2


def test_the_bootstrap_names_the_log_groups_as_infra_does():
    sys.path.insert(0, str(REPO / "bootstrap"))
    from ec2hub_bootstrap.logship import log_group_name as bootstrap_name

    for role in ("hub", "notebook"):
        assert bootstrap_name("lab-2", role) == log_group_name("lab-2", role)
