"""checkov and parliament on the synthesized templates: no finding but those infra/nag.py accepts.

checkov runs from its own venv (.cache/checkov, made by `make deps`: it pins a boto3 that conflicts
with ours) over both synthesized templates; parliament lints every identity policy in them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from infra_testing import REPO, resolve_intrinsics
from parliament import analyze_policy_string

from infra.nag import PARLIAMENT_ACKNOWLEDGED

CHECKOV = REPO / ".cache/checkov/bin/checkov"


@pytest.fixture(scope="module")
def checkov(default_synth, full_synth, cognito_synth):
    """checkov's JSON report for the templates, by template name; nothing leaves the machine."""
    if not CHECKOV.exists():
        pytest.fail(
            f"{CHECKOV} missing: run `make deps` (it installs checkov in its own venv)"
        )
    synths = {"default": default_synth, "full": full_synth, "cognito": cognito_synth}
    files = {name: next(s.outdir.glob("*.template.json")) for name, s in synths.items()}
    result = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "cloudformation",
            "--skip-download",  # no Prisma Cloud: no guidelines or policies from the network
            "--output",
            "json",
            "--compact",
            *[arg for path in files.values() for arg in ("-f", str(path))],
        ],
        env={
            **os.environ,
            "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
            "BC_SKIP_MAPPING": "TRUE",
        },
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    (report,) = reports if isinstance(reports, list) else [reports]
    by_file = {p.name: name for name, p in files.items()}
    return report, by_file, synths


def findings(report, by_file, kind):
    return {
        (
            by_file[Path(c["file_path"]).name],
            c["check_id"],
            c["resource"].split(".", 1)[1],
        )
        for c in report["results"][kind]
    }


def acknowledged_checkov(synths):
    return {
        (name, skip["id"], logical_id)
        for name, synth in synths.items()
        for logical_id, resource in synth.template["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    }


def test_checkov_reports_no_unacknowledged_finding(checkov):
    report, by_file, _ = checkov
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100
    assert findings(report, by_file, "failed_checks") == set()


def test_every_checkov_acknowledgment_is_used_and_explained(checkov):
    report, by_file, synths = checkov
    assert findings(report, by_file, "skipped_checks") == acknowledged_checkov(synths)
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"]["suppress_comment"]) >= 60, check["check_id"]


def identity_policies(synth):
    """Every identity policy of the template, by construct path in the stack."""
    prefix = synth.context.get("hub_id", "ec2hub") + "/"
    policies = [*synth.resources("AWS::IAM::Policy").values(), *synth.resources("AWS::IAM::ManagedPolicy").values()]
    for resource in policies:
        path = resource["Metadata"]["aws:cdk:path"]
        path = path.removeprefix(prefix).removesuffix("/Resource")
        yield (
            path,
            resolve_intrinsics(
                resource["Properties"]["PolicyDocument"], synth.template
            ),
        )
    # Identity policies live nowhere else in this stack; if one ever does, lint it here too.
    assert not any(
        "Policies" in r["Properties"]
        for r in synth.resources("AWS::IAM::Role").values()
    )


def parliament_findings(synth):
    found = set()
    for path, document in identity_policies(synth):
        policy = analyze_policy_string(
            json.dumps(document), include_community_auditors=True
        )
        found |= {(path, f.issue) for f in policy.findings}
    return found


def test_parliament_reports_no_unacknowledged_finding(any_synth):
    assert parliament_findings(any_synth) - set(PARLIAMENT_ACKNOWLEDGED) == set()


def test_every_parliament_acknowledgment_is_used(default_synth, full_synth):
    used = parliament_findings(default_synth) | parliament_findings(full_synth)
    assert used == set(PARLIAMENT_ACKNOWLEDGED)
    for reason in PARLIAMENT_ACKNOWLEDGED.values():
        assert len(reason) >= 60


def test_parliament_sees_a_new_finding(default_synth):
    """The check is live: a statement allowing s3:* on * is reported."""
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    policy = analyze_policy_string(
        json.dumps(document), include_community_auditors=True
    )
    assert {f.issue for f in policy.findings} & {
        "RESOURCE_STAR",
        "PERMISSIONS_MANAGEMENT_ACTIONS",
    }
