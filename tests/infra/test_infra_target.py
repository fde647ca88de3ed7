"""The target stack (infra/target_stack.py) and the hub stack of a catalog with a target.

What the emulator cannot show (moto does not enforce IAM): that the hub's own role cannot launch in
the target account. It cannot because nothing in that account trusts it except the role made
here, whose trust policy names the hub's role alone and requires the external id, and whose
permissions are the hub role's own RunInstances conditions, scoped to this stack's templates,
subnets and instance profile.
"""

from __future__ import annotations

import json

import pytest
from cfnlint.api import lint
from ec2spawner.catalog import parse_catalog
from infra_testing import (
    HUB_ROLE,
    TARGET_CATALOG,
    TARGET_CONTEXT,
    TARGET_EXTERNAL_ID,
    TARGET_OUTPUTS,
    TARGET_REGION,
    TARGET_ROLE,
    as_list,
    ingress_rules,
    join_text,
    logical_id_by_description,
    notebook_templates,
    policy_statements,
    required_context,
    resolve_intrinsics,
)

import infra
from infra.config import ConfigError
from infra.target_stack import role_path, target_sites

LAUNCH_SIDS = [
    "UseOwnLaunchTemplates", "RunInstancesAsTemplated", "RunInstancesEncryptedTemplateVolumes",
    "RunInstancesSpotRequests", "RunInstancesNoPublicAddress", "RunInstancesImageAndGroupsFromTemplate",
    "RunInstancesInNotebookSubnets", "TagOnlyAtLaunch", "ManageOwnNotebooks", "DescribeEc2",
    "PassNotebookRoleToEc2", "WriteServerSecrets", "ListServerSecrets",
]


def hub_access(synth):
    return logical_id_by_description(synth, "AWS::IAM::Role", "launches and ends the notebooks of target")


def test_the_role_the_hub_assumes_trusts_only_the_hubs_role_with_the_external_id(target_synth):
    role = target_synth.template["Resources"][hub_access(target_synth)]["Properties"]
    assert role["AssumeRolePolicyDocument"] == {
        "Version": "2012-10-17",
        "Statement": [{
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Principal": {"AWS": HUB_ROLE},
            "Condition": {"StringEquals": {"sts:ExternalId": TARGET_EXTERNAL_ID}},
        }],
    }
    assert (role["RoleName"], role["Path"], role["MaxSessionDuration"]) == ("ec2hub-research", "/", 3600)
    assert role_path("arn:aws:iam::222222222222:role/teams/lab/ec2hub") == "/teams/lab/"


def test_the_assumed_role_may_do_what_the_hub_role_may_at_home_with_the_same_conditions(
        target_synth, hub_with_target_synth):
    there = policy_statements(target_synth, hub_access(target_synth))
    home = policy_statements(hub_with_target_synth,
                             logical_id_by_description(hub_with_target_synth, "AWS::IAM::Role", "ec2hub hub host"))
    assert list(there) == [*LAUNCH_SIDS, "ServerSecretsViaSsm"]
    for sid in LAUNCH_SIDS:
        assert there[sid]["Action"] == home[sid]["Action"], sid
        assert set(there[sid].get("Condition", {})) == set(home[sid].get("Condition", {})), sid
    # Its own templates, subnets, profile and the target's classes' types only.
    templates = notebook_templates(target_synth)
    assert sorted(join_text(r) for r in as_list(there["UseOwnLaunchTemplates"]["Resource"])) == sorted(
        f"arn:aws:ec2:{TARGET_REGION}:222222222222:launch-template/{{{lt}}}" for lt in templates)
    templated = there["RunInstancesAsTemplated"]["Condition"]
    assert templated["StringEquals"] == {"ec2:InstanceType": ["g6e.xlarge"],
                                         "ec2:MetadataHttpTokens": "required"}
    assert templated["NumericLessThanEquals"] == {"ec2:MetadataHttpPutResponseHopLimit": "1"}
    profile = templated["ArnEquals"]["ec2:InstanceProfile"]
    assert profile["Fn::GetAtt"][1] == "Arn" and "Notebooks" in profile["Fn::GetAtt"][0]
    subnets = [join_text(r) for r in as_list(there["RunInstancesInNotebookSubnets"]["Resource"])]
    assert len(subnets) == 2 and all("{NetworkVpcprivateSubnet" in s for s in subnets)
    assert there["ManageOwnNotebooks"]["Condition"] == home["ManageOwnNotebooks"]["Condition"]
    assert there["TagOnlyAtLaunch"]["Condition"] == home["TagOnlyAtLaunch"]["Condition"]
    assert join_text(there["WriteServerSecrets"]["Resource"]) == (
        f"arn:aws:ssm:{TARGET_REGION}:222222222222:parameter/ec2hub/ec2hub/servers/*")
    assert there["ServerSecretsViaSsm"]["Condition"]["StringEquals"] == {
        "kms:ViaService": f"ssm.{TARGET_REGION}.amazonaws.com"}


def test_the_target_makes_the_templates_of_its_classes_and_the_hub_the_others(target_synth, hub_with_target_synth):
    there = {t["Properties"]["LaunchTemplateName"] for t in notebook_templates(target_synth).values()}
    home = {t["Properties"]["LaunchTemplateName"] for t in notebook_templates(hub_with_target_synth).values()}
    assert there == {"ec2hub-ec2hub-research-gpu"}
    assert home == {"ec2hub-ec2hub-small", "ec2hub-ec2hub-spot-gpu"}
    (template,) = notebook_templates(target_synth).values()
    data = template["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True


def test_the_notebook_port_is_open_to_the_hubs_vpc_only(target_synth):
    group = logical_id_by_description(target_synth, "AWS::EC2::SecurityGroup", "ec2hub notebook servers",
                                     key="GroupDescription")
    assert [(r["CidrIp"], r["FromPort"], r["ToPort"]) for r in ingress_rules(target_synth, group)] == [
        ("10.0.0.0/16", 8888, 8888)]
    (vpc,) = target_synth.resources("AWS::EC2::VPC").values()
    assert vpc["Properties"]["CidrBlock"] == "10.1.0.0/16"  # not the hub's: the VPCs can be peered


def test_the_outputs_are_what_the_hub_stack_reads(target_synth):
    outputs = target_synth.template["Outputs"]
    assert set(outputs) == set(TARGET_OUTPUTS["ec2hub-research"])
    assert outputs["SecretPrefix"]["Value"] == "/ec2hub/ec2hub/servers/"
    subnets = json.loads(resolve_intrinsics(outputs["NotebookSubnets"]["Value"], target_synth.template))
    assert sorted(subnets) == [f"{TARGET_REGION}a", f"{TARGET_REGION}b"]


def test_the_hub_may_assume_the_target_role_and_its_settings_carry_the_target(hub_with_target_synth):
    hub = policy_statements(hub_with_target_synth,
                            logical_id_by_description(hub_with_target_synth, "AWS::IAM::Role", "ec2hub hub host"))
    assert hub["AssumeTargetRoles"] == {"Action": "sts:AssumeRole", "Effect": "Allow", "Resource": TARGET_ROLE,
                                        "Sid": "AssumeTargetRoles"}
    # The hub's own RunInstances is for its own classes' types only.
    assert hub["RunInstancesAsTemplated"]["Condition"]["StringEquals"]["ec2:InstanceType"] == [
        "g5.xlarge", "g6.xlarge", "t3.medium"]  # small and spot-gpu, not research-gpu's g6e.xlarge
    (parameter,) = hub_with_target_synth.resources("AWS::SSM::Parameter").values()
    document = json.loads(resolve_intrinsics(parameter["Properties"]["Value"], hub_with_target_synth.template))
    site = json.loads(TARGET_OUTPUTS["ec2hub-research"]["NotebookSubnets"])
    assert document["targets"] == {"research": {
        "account": "222222222222", "region": TARGET_REGION, "role_arn": TARGET_ROLE,
        "external_id": TARGET_EXTERNAL_ID, "subnets": site, "secret_prefix": "/ec2hub/ec2hub/servers/"}}
    research = next(c for c in document["classes"] if c["slug"] == "research-gpu")
    assert (research["target"], research["launch_template_id"]) == ("research", "lt-0b0b0b0b0b0b0b0b0")
    outputs = hub_with_target_synth.template["Outputs"]
    assert {"HubRoleArn", "HubVpcCidr"} <= set(outputs)
    # The target's notebooks may call the hub API from their VPC's range, on that port only.
    group = logical_id_by_description(hub_with_target_synth, "AWS::EC2::SecurityGroup", "ec2hub hub host",
                                      key="GroupDescription")
    assert [(r["FromPort"], r["Description"]) for r in ingress_rules(hub_with_target_synth, group)
            if r.get("CidrIp") == "10.1.0.0/16"] == [(8081, "notebooks of target research to the hub API")]


def test_cfn_lint_and_cdk_nag_are_clean_on_the_target_stack(target_synth):
    assert [str(m) for m in lint(json.dumps(target_synth.template), regions=[TARGET_REGION])] == []
    report = target_synth.aws_solutions_report()
    assert report["conclusion"] == "success" and report["violations"] == []


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({}, ("target 'research': no outputs of its stack ec2hub-research: deploy it first (cdk deploy -c "
             "target=research -c hub_role_arn=... --outputs-file targets.json) and give the file: "
             "-c target_outputs=targets.json")),
        ({"ec2hub-research": {**TARGET_OUTPUTS["ec2hub-research"], "HubAccessRoleArn": "arn:aws:iam::222222222222:role/x"}},
         ("target 'research': its stack made the role arn:aws:iam::222222222222:role/x, the catalog names "
         f"{TARGET_ROLE}")),
        ({"ec2hub-research": {**TARGET_OUTPUTS["ec2hub-research"], "LaunchTemplates": "{}"}},
         "class 'research-gpu': no launch template in ec2hub-research: deploy it again (cdk deploy -c target=research)"),
        ({"ec2hub-research": {"SecretPrefix": "/x/"}},
         "target 'research': the outputs of ec2hub-research are incomplete ('NotebookSubnets'): deploy it again"),
    ],
)
def test_a_hub_stack_whose_target_is_not_deployed_says_what_to_run(outputs, message):
    with pytest.raises(ConfigError) as caught:
        target_sites(parse_catalog(TARGET_CATALOG), outputs, hub_id="ec2hub")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"hub_role_arn": None}, "hub_role_arn: required with -c target=<name>"),
        ({"hub_role_arn": "ec2hub-hub"}, "hub_role_arn: 'ec2hub-hub' is not an IAM role ARN"),
        ({"target": "elsewhere"}, "target: 'elsewhere' is not one of the catalog's targets (defined: research)"),
        ({"target_vpc_id": "vpc-1"}, "target_vpc_id and target_subnets go together"),
    ],
)
def test_a_bad_target_context_is_one_line(target_catalog, context, message):
    merged = {**TARGET_CONTEXT, "catalog": str(target_catalog), **context}
    with pytest.raises(ConfigError) as caught:
        infra.build_app(required_context({k: v for k, v in merged.items() if v is not None}), nag=False)
    assert str(caught.value).startswith(message)


def test_an_existing_vpc_is_used_by_id_with_its_subnets(tmp_path_factory, target_catalog):
    from infra_testing import synth

    subnets = {f"{TARGET_REGION}a": "subnet-0aaa", f"{TARGET_REGION}b": "subnet-0bbb"}
    existing = synth(tmp_path_factory, {
        **TARGET_CONTEXT, "catalog": str(target_catalog), "target_vpc_id": "vpc-0123",
        "target_subnets": ",".join(f"{az}={s}" for az, s in subnets.items()), "target_cidr": "172.20.0.0/16"})
    assert existing.resources("AWS::EC2::VPC") == {} and existing.resources("AWS::EC2::NatGateway") == {}
    group = logical_id_by_description(existing, "AWS::EC2::SecurityGroup", "ec2hub notebook servers",
                                      key="GroupDescription")
    assert existing.template["Resources"][group]["Properties"]["VpcId"] == "vpc-0123"
    statements = policy_statements(existing, hub_access(existing))
    assert sorted(join_text(r) for r in as_list(statements["RunInstancesInNotebookSubnets"]["Resource"])) == [
        f"arn:aws:ec2:{TARGET_REGION}:222222222222:subnet/{s}" for s in sorted(subnets.values())]
    outputs = existing.template["Outputs"]
    assert json.loads(outputs["NotebookSubnets"]["Value"]) == subnets
    assert outputs["VpcCidr"]["Value"] == "172.20.0.0/16"
    assert existing.aws_solutions_report()["conclusion"] == "success"
