"""cdk-nag AwsSolutions: nothing unacknowledged, and every acknowledgment is specific and explained."""

from __future__ import annotations

import json

import pytest
from infra_testing import REQUIRED_CONTEXT

import infra

MIN_REASON = 60


def acknowledgments(synth):
    metadata = synth.metadata()
    return {
        (path, rule): reason
        for path, entries in metadata.items()
        for entry in entries
        if entry["type"] == "aws:cdk:acknowledged-rules"
        for rule, reason in entry["data"].items()
        if rule.startswith("AwsSolutions::")
    }


def test_aws_solutions_reports_no_violation(any_synth):
    report = any_synth.aws_solutions_report()
    assert report["conclusion"] == "success"
    assert report["violations"] == []


def test_every_acknowledgment_names_one_finding_with_a_real_reason(any_synth):
    acks = acknowledgments(any_synth)
    assert acks
    for (path, rule), reason in acks.items():
        assert len(reason) >= MIN_REASON, (path, rule, reason)
        if "IAM4" in rule or "IAM5" in rule:
            assert rule.endswith("]"), f"{rule} acknowledges a whole rule on {path}"
        # Acknowledged on a resource or its role/policy, never on the stack as a whole.
        assert path.count("/") >= 2, (path, rule)


def test_every_acknowledgment_is_used(any_synth):
    used = {
        v["acknowledgedId"]
        for v in any_synth.aws_solutions_report()["suppressedViolations"]
    }
    assert {rule for (_, rule) in acknowledgments(any_synth)} == used


def test_an_unacknowledged_finding_fails_synth(monkeypatch, tmp_path):
    monkeypatch.setattr(infra, "acknowledge_findings", lambda stack: None)
    app = infra.build_app(REQUIRED_CONTEXT, outdir=tmp_path)
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    (nag,) = [r for r in report["pluginReports"] if r["pluginName"] == "AwsSolutions"]
    assert any(v["ruleName"].startswith("AwsSolutions-IAM5") for v in nag["violations"])
