"""The homes' file system policy: TLS and IAM always, only the notebook role, only through a mount target."""

from __future__ import annotations

from aws_cdk.assertions import Match
from infra_testing import as_list, logical_id_by_description

EFS = "AWS::EFS::FileSystem"


def file_system_policy(synth):
    (file_system,) = synth.resources(EFS).values()
    return file_system["Properties"]["FileSystemPolicy"]


def test_everything_without_tls_is_denied(any_synth):
    any_synth.assertions.has_resource_properties(
        EFS,
        {
            "FileSystemPolicy": Match.object_like(
                {
                    "Statement": Match.array_with(
                        [
                            {
                                "Sid": "DenyWithoutTls",
                                "Effect": "Deny",
                                "Principal": {"AWS": "*"},
                                "Action": "*",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        ]
                    )
                }
            )
        },
    )


def test_only_the_notebook_role_may_mount_and_only_through_a_mount_target(any_synth):
    """Root on the tree only for the notebook role (its bootstrap makes each home); nobody else."""
    notebook_role = logical_id_by_description(
        any_synth, "AWS::IAM::Role", "ec2hub notebook instances"
    )
    allows = [
        s for s in file_system_policy(any_synth)["Statement"] if s["Effect"] == "Allow"
    ]
    assert allows == [
        {
            "Sid": "NotebooksThroughMountTargets",
            "Effect": "Allow",
            "Principal": {"AWS": {"Fn::GetAtt": [notebook_role, "Arn"]}},
            "Action": [
                "elasticfilesystem:ClientMount",
                "elasticfilesystem:ClientWrite",
                "elasticfilesystem:ClientRootAccess",
            ],
            "Condition": {"Bool": {"elasticfilesystem:AccessedViaMountTarget": "true"}},
        }
    ]


def test_no_anonymous_client_is_allowed_anything(any_synth):
    """A client mounting without IAM is anonymous: only an Allow for ``*`` would let it in."""
    for statement in file_system_policy(any_synth)["Statement"]:
        if statement["Effect"] == "Allow":
            assert statement["Principal"] != {"AWS": "*"}
            assert statement["Principal"] != "*"


def test_no_role_has_an_identity_grant_on_the_file_system(any_synth):
    """EFS allows a client what either policy allows: no identity policy may add to the above."""
    for policy in any_synth.resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = as_list(statement["Action"])
            assert not any(a.startswith("elasticfilesystem:") for a in actions), (
                statement
            )
