"""Baked classes: the Image Builder pipeline of each, the parameter its launch template reads, and
the one source of the install steps (the component runs the user data's own install.sh)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from aws_cdk.assertions import Match
from cfnlint.api import lint
from ec2spawner.catalog import parse_catalog
from infra_testing import REPO, hub_group, notebook_templates, synth, write_catalog
from test_infra_linters import CHECKOV, parliament_findings
from test_infra_nag import acknowledgments

from infra.config import ConfigError, config_from_context
from infra.images import component_document, content_version
from infra.nag import PARLIAMENT_ACKNOWLEDGED
from infra.userdata import assemble_script

HUB = "research"
BAKED_CATALOG = {
    "defaults": {"ami": "ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"},
    "classes": [
        {"slug": "small", "display_name": "Small", "instance_types": ["t3.medium"], "default": True},
        {
            "slug": "data-science",
            "display_name": "Data science",
            "instance_types": ["m7i.large", "m6i.large"],
            "volume_gb": 60,
            "image": "baked",
            "packages": ["pandas==2.3.3", "scikit-learn>=1.7"],
        },
        {
            "slug": "gpu",
            "display_name": "GPU",
            "instance_types": ["g5.xlarge"],
            "ami": "ami-0123456789abcdef0",
            "image": "baked",
        },
    ],
}
PARAMETER = f"/ec2hub/{HUB}/images/data-science"


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    catalog = write_catalog(tmp_path_factory.mktemp("catalog"), BAKED_CATALOG)
    return synth(
        tmp_path_factory,
        {"hub_id": HUB, "vpc_endpoints": True, "catalog": str(catalog), "image_versions_kept": 5,
         "image_build_schedule": "cron(0 3 ? * sun *)"},
    )


def one(synth, resource_type, name):
    found = [
        (k, v["Properties"]) for k, v in synth.resources(resource_type).items()
        if v["Properties"].get("Name") == name
    ]
    assert len(found) == 1, (resource_type, name, found)
    return found[0]


def test_a_stock_catalog_has_no_image_builder_resources(default_synth):
    assert not [r for r in default_synth.template["Resources"].values() if r["Type"].startswith("AWS::ImageBuilder::")]


def test_each_baked_class_has_its_own_pipeline_and_a_stock_class_none(baked):
    for kind in ("Component", "ImageRecipe", "InfrastructureConfiguration", "DistributionConfiguration",
                 "ImagePipeline", "LifecyclePolicy"):
        names = sorted(v["Properties"]["Name"] for v in baked.resources(f"AWS::ImageBuilder::{kind}").values())
        assert names == [f"ec2hub-{HUB}-data-science", f"ec2hub-{HUB}-gpu"], kind


def test_the_component_runs_the_user_datas_own_install_script_with_the_class_packages(baked, tmp_path):
    component_id, component = one(baked, "AWS::ImageBuilder::Component", f"ec2hub-{HUB}-data-science")
    document = json.loads(component["Data"])
    (build,) = [p for p in document["phases"] if p["name"] == "build"]
    (script,) = build["steps"][0]["inputs"]["commands"]
    user_data = assemble_script("notebook").decode()
    for path in ("notebook/install.sh", "common/venv.sh"):
        text = (REPO / "bootstrap" / path).read_text()
        # Byte for byte the file the notebook user data writes (and sources): one source.
        assert f"<<'EC2HUB_END_OF_FILE'\n{text}EC2HUB_END_OF_FILE\n" in script, path
        assert f"<<'EC2HUB_END_OF_FILE'\n{text}EC2HUB_END_OF_FILE\n" in user_data, path
    assert script.rstrip().endswith("""exec /bin/bash "$dir/notebook/install.sh" image pandas==2.3.3 'scikit-learn>=1.7'""")
    (tmp_path / "build.sh").write_text(script)
    subprocess.run([str(REPO / ".venv/bin/shellcheck"), "--severity=style", str(tmp_path / "build.sh")], check=True)
    assert component["Platform"] == "Linux" and len(component["Data"]) <= 16000
    # The recipe builds on the class's base image with this component and its encrypted root volume.
    _, recipe = one(baked, "AWS::ImageBuilder::ImageRecipe", f"ec2hub-{HUB}-data-science")
    assert recipe["ParentImage"] == BAKED_CATALOG["defaults"]["ami"]  # Image Builder resolves ssm: itself
    assert recipe["Components"] == [{"ComponentArn": {"Fn::GetAtt": [component_id, "Arn"]}}]
    assert recipe["BlockDeviceMappings"] == [{"DeviceName": "/dev/xvda", "Ebs": {
        "VolumeSize": 60, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}}]
    _, gpu = one(baked, "AWS::ImageBuilder::ImageRecipe", f"ec2hub-{HUB}-gpu")
    assert gpu["ParentImage"] == "ami-0123456789abcdef0"


def test_versions_follow_the_content_and_only_the_content():
    catalog = parse_catalog(BAKED_CATALOG)
    cls = catalog.get("data-science")
    more = parse_catalog({**BAKED_CATALOG, "classes": [
        BAKED_CATALOG["classes"][0], {**BAKED_CATALOG["classes"][1], "packages": ["pandas==2.3.3", "polars==1.30.0"]}]})
    assert component_document(cls) == component_document(catalog.get("data-science"))
    assert content_version(component_document(cls)) != content_version(component_document(more.get("data-science")))
    assert content_version("a") == content_version("a")
    major, minor, patch = (int(n) for n in content_version("a").split("."))
    assert major == 1 and 0 <= minor < 2**24 and 0 <= patch < 2**24


def test_the_launch_template_launches_the_image_the_pipeline_publishes(baked):
    (template,) = [t for t in notebook_templates(baked).values()
                   if t["Properties"]["LaunchTemplateName"] == f"ec2hub-{HUB}-data-science"]
    # EC2 resolves the parameter at every launch, so $Default launches the newest image.
    assert template["Properties"]["LaunchTemplateData"]["ImageId"] == f"resolve:ssm:{PARAMETER}"
    parameter_id, parameter = next(
        (k, v["Properties"]) for k, v in baked.resources("AWS::SSM::Parameter").items()
        if v["Properties"]["Name"] == PARAMETER
    )
    assert parameter_id in template["DependsOn"]
    assert parameter["DataType"] == "aws:ec2:image"
    # Created with the base image; later deploys do not write it again (a dynamic reference).
    assert parameter["Value"] == "{{resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64}}"
    _, distribution = one(baked, "AWS::ImageBuilder::DistributionConfiguration", f"ec2hub-{HUB}-data-science")
    (target,) = distribution["Distributions"]
    assert target["SsmParameterConfigurations"] == [{"ParameterName": PARAMETER, "DataType": "aws:ec2:image"}]
    assert target["AmiDistributionConfiguration"]["AmiTags"] == {"ec2hub:hub": HUB, "ec2hub:class": "data-science"}
    assert target["AmiDistributionConfiguration"]["Name"] == f"ec2hub-{HUB}-data-science-{{{{ imagebuilder:buildDate }}}}"
    # A stock class keeps its deploy-time image.
    (small,) = [t for t in notebook_templates(baked).values()
                if t["Properties"]["LaunchTemplateName"] == f"ec2hub-{HUB}-small"]
    assert "Ref" in small["Properties"]["LaunchTemplateData"]["ImageId"]


def test_the_hub_may_resolve_the_image_parameters_and_nothing_more(baked):
    baked.assertions.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([{
        "Sid": "ResolveClassImages", "Effect": "Allow", "Action": "ssm:GetParameters",
        "Resource": [
            {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, f":ssm:us-east-1:111111111111:parameter/ec2hub/{HUB}/images/{slug}"]]}
            for slug in ("data-science", "gpu")
        ],
    }])}})


def test_build_instances_run_private_imdsv2_only_with_a_role_that_only_builds(baked):
    _, infrastructure = one(baked, "AWS::ImageBuilder::InfrastructureConfiguration", f"ec2hub-{HUB}-data-science")
    assert infrastructure["InstanceTypes"] == ["m7i.large", "m6i.large"]
    assert infrastructure["InstanceMetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
    assert infrastructure["TerminateInstanceOnFailure"] is True
    subnet = baked.template["Resources"][infrastructure["SubnetId"]["Ref"]]
    assert subnet["Properties"]["MapPublicIpOnLaunch"] is False
    (group_id,) = [g["Fn::GetAtt"][0] for g in infrastructure["SecurityGroupIds"]]
    group = baked.template["Resources"][group_id]["Properties"]
    assert "SecurityGroupIngress" not in group
    assert not [r for r in baked.resources("AWS::EC2::SecurityGroupIngress").values()
                if r["Properties"]["GroupId"] == {"Fn::GetAtt": [group_id, "GroupId"]}]
    # The role: Systems Manager's agent, AWSTOE's bucket, its own build logs, its own components.
    profile = baked.template["Resources"][infrastructure["InstanceProfileName"]["Ref"]]["Properties"]
    (role_ref,) = profile["Roles"]
    statements = {
        s["Sid"]: s
        for p in baked.resources("AWS::IAM::Policy").values() if role_ref in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    }
    assert sorted(statements) == ["ReadAwstoe", "ReadOwnComponents", "SystemsManagerAgent", "WriteBuildLogs"]
    components = sorted(k for k in baked.resources("AWS::ImageBuilder::Component"))
    assert sorted(r["Fn::GetAtt"][0] for r in statements["ReadOwnComponents"]["Resource"]) == components
    assert statements["ReadOwnComponents"]["Action"] == "imagebuilder:GetComponent"
    assert all(not a.startswith(("ssm:Get", "ssm:Put", "iam:", "ec2:")) for s in statements.values()
               for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))
    role = baked.template["Resources"][role_ref["Ref"]]["Properties"]
    assert "ManagedPolicyArns" not in role
    # With VPC endpoints, the builds reach Systems Manager through them.
    endpoint_rules = [r["Properties"] for r in baked.resources("AWS::EC2::SecurityGroupIngress").values()
                      if r["Properties"].get("SourceSecurityGroupId") == {"Fn::GetAtt": [group_id, "GroupId"]}]
    assert [(r["FromPort"], r["ToPort"]) for r in endpoint_rules] == [(443, 443)]


def test_lifecycle_keeps_the_configured_number_of_images_of_the_class(baked):
    _, policy = one(baked, "AWS::ImageBuilder::LifecyclePolicy", f"ec2hub-{HUB}-data-science")
    assert policy["ResourceType"] == "AMI_IMAGE" and policy["Status"] == "ENABLED"
    assert policy["ResourceSelection"] == {"TagMap": {"ec2hub:hub": HUB, "ec2hub:class": "data-science"}}
    assert policy["PolicyDetails"] == [{
        "Action": {"Type": "DELETE", "IncludeResources": {"Amis": True, "Snapshots": True}},
        "Filter": {"Type": "COUNT", "Value": 5},
    }]
    _, pipeline = one(baked, "AWS::ImageBuilder::ImagePipeline", f"ec2hub-{HUB}-data-science")
    assert pipeline["Tags"] == {"ec2hub:hub": HUB, "ec2hub:class": "data-science"}  # what the policy selects
    # On schedule, rebuilt only when the base image (or a component) has a newer version.
    assert pipeline["Schedule"] == {
        "ScheduleExpression": "cron(0 3 ? * sun *)",
        "PipelineExecutionStartCondition": "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE",
    }


def test_a_build_starts_when_the_recipe_changes(baked):
    recipe_versions = {v["Properties"]["Version"] for v in baked.resources("AWS::ImageBuilder::ImageRecipe").values()}
    starts = [json.dumps(r["Properties"]) for r in baked.resources("Custom::AWS").values()
              if "startImagePipelineExecution" in json.dumps(r["Properties"])]
    assert len(starts) == 2 == len(recipe_versions)


def test_image_knobs_default_to_three_versions_and_no_schedule():
    config = config_from_context({"admin_user": "a", "allow_http": True})
    assert (config.image_versions_kept, config.image_build_schedule) == (3, None)
    assert config_from_context({"admin_user": "a", "allow_http": True, "image_versions_kept": "7"}).image_versions_kept == 7


@pytest.mark.parametrize(("key", "value", "message"), [
    ("image_versions_kept", "0", "context image_versions_kept: '0' must be between 1 and 100"),
    ("image_versions_kept", "many", "context image_versions_kept: 'many' is not a whole number"),
    ("image_build_schedule", "weekly", "context image_build_schedule: 'weekly' is not an Image Builder cron expression (cron(...))"),
])
def test_bad_image_knobs_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError) as raised:
        config_from_context({"admin_user": "a", "allow_http": True, key: value})
    assert str(raised.value) == message


def test_linters_are_clean_on_a_baked_stack(baked):
    assert [str(m) for m in lint(json.dumps(baked.template), regions=["us-east-1"])] == []
    report = baked.aws_solutions_report()
    assert report["violations"] == []
    used = {v["acknowledgedId"] for v in report["suppressedViolations"]}
    assert {rule for (_, rule) in acknowledgments(baked)} == used
    image_acks = {rule for (path, rule) in acknowledgments(baked) if "/Images/" in path}
    assert len(image_acks) == 4, image_acks
    assert parliament_findings(baked) - set(PARLIAMENT_ACKNOWLEDGED) == set()


def test_checkov_is_clean_on_a_baked_stack(baked):
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} missing: run `make deps` (it installs checkov in its own venv)")
    path = next(baked.outdir.glob("*.template.json"))
    result = subprocess.run(
        [str(CHECKOV), "--framework", "cloudformation", "--skip-download", "--output", "json", "--compact",
         "-f", str(path)],
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"},
        capture_output=True, text=True, timeout=240, check=False,
    )
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0
    assert [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]] == []
    skipped = {c["resource"].split(".", 1)[1] for c in report["results"]["skipped_checks"]}
    assert any(r.startswith("ImagesBuildRoleDefaultPolicy") for r in skipped)


def test_the_sandbox_builds_each_baked_class_from_the_synthesized_component(baked):
    """sandbox.images reads the deployed template's components (moto has no Image Builder): each
    baked class's, with the template's version and the document infra wrote, and its parameter."""
    from sandbox.images import stack_components

    catalog = parse_catalog(BAKED_CATALOG)
    found = {c.slug: c for c in stack_components(baked.template)}
    assert sorted(found) == ["data-science", "gpu"]
    for cls in (c for c in catalog.classes if c.baked):
        document = component_document(cls)
        component = found[cls.slug]
        assert (component.hub_id, component.version, component.document) == (
            HUB, content_version(document), json.loads(document))
        assert component.parameter == f"/ec2hub/{HUB}/images/{cls.slug}"
        assert component.image_name == f"ec2hub-{HUB}-{cls.slug}-{content_version(document)}"
    build = found["data-science"].phase("build")
    assert len(build) == 1 and build[0].rstrip("\n").endswith(
        "exec /bin/bash \"$dir/notebook/install.sh\" image pandas==2.3.3 'scikit-learn>=1.7'")


@pytest.fixture(scope="module")
def baked_hub(tmp_path_factory):
    return synth(tmp_path_factory, {"hub_id": HUB, "hub_baked_image": True})


def test_the_baked_hub_launches_the_image_its_pipeline_publishes(baked_hub):
    from infra.hub import AL2023_PARAMETER
    from infra.images import hub_component_document

    parameter_name = f"/ec2hub/{HUB}/hub-image"
    spec = hub_group(baked_hub)[1]["Properties"]["LaunchTemplate"]
    hub = baked_hub.template["Resources"][spec["LaunchTemplateId"]["Ref"]]
    assert hub["Properties"]["LaunchTemplateData"]["ImageId"] == f"resolve:ssm:{parameter_name}"
    (parameter_id, parameter), = [(k, v["Properties"]) for k, v in baked_hub.resources("AWS::SSM::Parameter").items()
                                  if v["Properties"]["Name"] == parameter_name]
    # Created with the base image (resolved once), then the pipeline's to write.
    assert (parameter["DataType"], parameter["Value"]) == ("aws:ec2:image", "{{resolve:ssm:" + AL2023_PARAMETER + "}}")
    assert parameter_id in hub.get("DependsOn", [])
    _, recipe = one(baked_hub, "AWS::ImageBuilder::ImageRecipe", f"ec2hub-{HUB}-hub")
    assert recipe["ParentImage"] == f"ssm:{AL2023_PARAMETER}"
    _, distribution = one(baked_hub, "AWS::ImageBuilder::DistributionConfiguration", f"ec2hub-{HUB}-hub")
    assert distribution["Distributions"][0]["SsmParameterConfigurations"] == [
        {"ParameterName": parameter_name, "DataType": "aws:ec2:image"}]
    _, policy = one(baked_hub, "AWS::ImageBuilder::LifecyclePolicy", f"ec2hub-{HUB}-hub")
    assert policy["ResourceSelection"] == {"TagMap": {"ec2hub:hub": HUB, "ec2hub:image": "hub"}}
    assert policy["PolicyDetails"][0]["Filter"] == {"Type": "COUNT", "Value": 3}
    _, component = one(baked_hub, "AWS::ImageBuilder::Component", f"ec2hub-{HUB}-hub")
    assert component["Data"] == hub_component_document()
    _, infrastructure = one(baked_hub, "AWS::ImageBuilder::InfrastructureConfiguration", f"ec2hub-{HUB}-hub")
    assert infrastructure["InstanceMetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
    assert len(baked_hub.resources("AWS::ImageBuilder::ImagePipeline")) == 1  # no class is baked


def test_the_hub_image_runs_the_hub_user_datas_own_install_steps(tmp_path):
    from infra.images import hub_component_document

    document = json.loads(hub_component_document())
    [build] = [p for p in document["phases"] if p["name"] == "build"]
    script = build["steps"][0]["inputs"]["commands"][0]
    assert script.rstrip().endswith('exec /bin/bash "$dir/hub/user-data.sh" image')
    # The same bytes of hub/user-data.sh and common/venv.sh as the hub's user data writes.
    user_data = assemble_script("hub").decode()
    for name in ("hub/user-data.sh", "common/venv.sh"):
        heredoc = f"cat >\"$dir.new\"/{name} <<'EC2HUB_END_OF_FILE'\n"
        body = user_data.split(heredoc, 1)[1].split("EC2HUB_END_OF_FILE\n", 1)[0]
        assert heredoc + body in script
    # Run as the component does, the image mode installs (here: finds) the venv and the proxy
    # and checks them, without the per-host steps (no system user, no unit).
    [validate] = [p for p in document["phases"] if p["name"] == "validate"]
    assert validate["steps"][0]["inputs"]["commands"] == [
        "/opt/ec2hub/venv/bin/jupyterhub --version && /opt/ec2hub/node/bin/configurable-http-proxy --version"]


def test_the_hub_is_not_baked_unless_asked_and_a_pinned_ami_is_the_hub_image_base(tmp_path_factory):
    assert config_from_context({"admin_user": "a", "allow_http": True}).hub_baked_image is False
    pinned = synth(tmp_path_factory, {"hub_id": HUB, "hub_baked_image": True, "hub_ami": "ami-0123456789abcdef0"})
    _, recipe = one(pinned, "AWS::ImageBuilder::ImageRecipe", f"ec2hub-{HUB}-hub")
    assert recipe["ParentImage"] == "ami-0123456789abcdef0"


def test_linters_are_clean_on_a_baked_hub_stack(baked_hub):
    assert [str(m) for m in lint(json.dumps(baked_hub.template), regions=["us-east-1"])] == []
    report = baked_hub.aws_solutions_report()
    assert report["violations"] == []
    assert parliament_findings(baked_hub) - set(PARLIAMENT_ACKNOWLEDGED) == set()
