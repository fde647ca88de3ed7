"""The homes' file system policy: TLS and IAM always, only the notebook role, only through an access point."""

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


def test_notebooks_mount_only_through_an_access_point_and_nobody_has_root(any_synth):
    """The notebook role: mount and write through a mount target and an access point, never root;
    a mount without an access point is denied outright (above any identity policy)."""
    notebook_role = logical_id_by_description(
        any_synth, "AWS::IAM::Role", "ec2hub notebook instances"
    )
    notebooks = {"AWS": {"Fn::GetAtt": [notebook_role, "Arn"]}}
    statements = file_system_policy(any_synth)["Statement"]
    assert [s for s in statements if s.get("Sid") != "DenyWithoutTls"] == [
        {
            "Sid": "DenyNotebooksWithoutAccessPoint",
            "Effect": "Deny",
            "Principal": notebooks,
            "Action": [
                "elasticfilesystem:ClientMount",
                "elasticfilesystem:ClientWrite",
                "elasticfilesystem:ClientRootAccess",
            ],
            "Condition": {"Null": {"elasticfilesystem:AccessPointArn": "true"}},
        },
        {
            "Sid": "NotebooksThroughAccessPoints",
            "Effect": "Allow",
            "Principal": notebooks,
            "Action": ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
            "Condition": {
                "Bool": {"elasticfilesystem:AccessedViaMountTarget": "true"},
                "Null": {"elasticfilesystem:AccessPointArn": "false"},
            },
        },
    ]
    allowed = [a for s in statements if s["Effect"] == "Allow" for a in as_list(s["Action"])]
    assert "elasticfilesystem:ClientRootAccess" not in allowed


def test_no_anonymous_client_is_allowed_anything(any_synth):
    """A client mounting without IAM is anonymous: only an Allow for ``*`` would let it in."""
    for statement in file_system_policy(any_synth)["Statement"]:
        if statement["Effect"] == "Allow":
            assert statement["Principal"] != {"AWS": "*"}
            assert statement["Principal"] != "*"


def test_no_role_has_an_identity_grant_to_mount_the_file_system(any_synth):
    """EFS allows a client what either policy allows: no identity policy may add to the above.
    (The hub's access point actions are API actions, not NFS client ones: test_infra_iam.py.)"""
    for policy in any_synth.resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = as_list(statement["Action"])
            assert not any(a.startswith(("elasticfilesystem:Client", "elasticfilesystem:*")) for a in actions), (
                statement
            )
