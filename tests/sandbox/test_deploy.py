"""Deploying a cloud assembly into the AWS emulator: assets, stand-in AMI parameters, and honesty
about what the emulator's CloudFormation could not create."""

import io
import json
import zipfile
from functools import partial

import boto3
import pytest
from moto.server import ThreadedMotoServer

from sandbox.deploy import deploy_assembly, prepare_template

ACCOUNT, REGION = "123456789012", "us-east-1"
DLAMI = "/aws/service/deeplearning/ami/x86_64/example-gpu/latest/ami-id"


@pytest.fixture(scope="module")
def session():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    session._endpoint = f"http://{host}:{port}"
    yield session
    server.stop()


def client(session, name):
    return session.client(name, region_name=REGION, endpoint_url=session._endpoint)


def write_assembly(tmp_path, template):
    asset_dir = tmp_path / "asset.abc123"
    (asset_dir / "pkg").mkdir(parents=True)
    (asset_dir / "pkg" / "__init__.py").write_text("VERSION = 1\n")
    (tmp_path / "Demo.template.json").write_text(json.dumps(template))
    (tmp_path / "Demo.assets.json").write_text(json.dumps({
        "version": "36.0.0",
        "files": {"abc123": {
            "source": {"path": "asset.abc123", "packaging": "zip"},
            "destinations": {"current": {
                "bucketName": "cdk-hnb659fds-assets-${AWS::AccountId}-${AWS::Region}",
                "objectKey": "abc123.zip",
            }},
        }},
    }))
    (tmp_path / "manifest.json").write_text(json.dumps({
        "version": "36.0.0",
        "artifacts": {
            "Demo.assets": {"type": "cdk:asset-manifest", "properties": {"file": "Demo.assets.json"}},
            "Demo": {
                "type": "aws:cloudformation:stack",
                "properties": {"templateFile": "Demo.template.json", "stackName": "demo"},
                "dependencies": ["Demo.assets"],
            },
        },
    }))
    return tmp_path


TEMPLATE = {
    "Parameters": {
        "GpuAmi": {"Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>", "Default": DLAMI},
        "BootstrapVersion": {"Type": "AWS::SSM::Parameter::Value<String>", "Default": "/cdk-bootstrap/hnb659fds/version"},
    },
    "Rules": {"CheckBootstrapVersion": {"Assertions": []}},
    "Resources": {
        "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.0.0.0/16"}},
        "Template": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {
            "LaunchTemplateData": {"ImageId": {"Ref": "GpuAmi"}, "InstanceType": "g5.xlarge"}}},
        "Secret": {"Type": "AWS::SecretsManager::Secret", "Properties": {}},
        "SetDefault": {"Type": "Custom::AWS", "Properties": {"ServiceToken": "arn:aws:lambda:x"}},
        "Flow": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.1.0.0/16"},
                 "DependsOn": ["SetDefault", "Vpc"]},
    },
    "Outputs": {"TemplateId": {"Value": {"Ref": "Template"}}},
}


def test_prepare_template_drops_only_the_bootstrap_check():
    prepared = prepare_template(TEMPLATE)
    assert "BootstrapVersion" not in prepared["Parameters"] and "Rules" not in prepared
    assert "SetDefault" not in prepared["Resources"], "custom resources need Lambda, which the emulator cannot run"
    assert prepared["Resources"]["Flow"]["DependsOn"] == ["Vpc"]
    assert prepared["Resources"]["Vpc"] == TEMPLATE["Resources"]["Vpc"]
    assert "BootstrapVersion" in TEMPLATE["Parameters"], "the input is not mutated"


def test_deploy_uploads_assets_stands_in_amis_and_reports_what_it_skipped(session, tmp_path):
    assembly = write_assembly(tmp_path, TEMPLATE)
    deployment = deploy_assembly(partial(client, session), assembly, account=ACCOUNT, region=REGION)

    assert deployment.stood_in_parameters == [DLAMI]
    assert deployment.not_created == [("Secret", "AWS::SecretsManager::Secret"), ("SetDefault", "Custom::AWS")]
    template_id = deployment.outputs["TemplateId"]
    assert deployment.physical_ids("AWS::EC2::LaunchTemplate") == [template_id]

    ec2 = client(session, "ec2")
    data = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)["LaunchTemplateVersions"][0]
    stand_in = client(session, "ssm").get_parameter(Name=DLAMI)["Parameter"]["Value"]
    assert data["LaunchTemplateData"]["ImageId"] == stand_in
    assert ec2.describe_images(ImageIds=[stand_in])["Images"]

    body = client(session, "s3").get_object(
        Bucket=f"cdk-hnb659fds-assets-{ACCOUNT}-{REGION}", Key="abc123.zip")["Body"].read()
    assert zipfile.ZipFile(io.BytesIO(body)).read("pkg/__init__.py") == b"VERSION = 1\n"


def test_redeploy_replaces_the_stack_and_reuses_the_stand_in_image(session, tmp_path):
    assembly = write_assembly(tmp_path, TEMPLATE)
    first = deploy_assembly(partial(client, session), assembly, account=ACCOUNT, region=REGION)
    second = deploy_assembly(partial(client, session), assembly, account=ACCOUNT, region=REGION)
    assert second.stood_in_parameters == []  # created by the first deploy, or the previous test
    assert first.outputs.keys() == second.outputs.keys()


def test_a_resource_reading_a_custom_resource_is_refused():
    template = {"Resources": {
        "Custom": {"Type": "Custom::Thing", "Properties": {}},
        "User": {"Type": "AWS::SSM::Parameter", "Properties": {"Value": {"Fn::GetAtt": ["Custom", "Out"]}}},
    }}
    with pytest.raises(ValueError, match="resource User reads custom resource Custom"):
        prepare_template(template)


def test_an_instance_primary_interface_becomes_its_subnet_for_the_emulator():
    nic = {"DeviceIndex": "0", "AssociatePublicIpAddress": False, "SubnetId": {"Ref": "Sub"},
           "GroupSet": [{"Fn::GetAtt": ["Sg", "GroupId"]}]}
    template = {"Resources": {"Hub": {"Type": "AWS::EC2::Instance",
                                      "Properties": {"InstanceType": "t3.medium", "NetworkInterfaces": [nic]}}}}
    props = prepare_template(template)["Resources"]["Hub"]["Properties"]
    assert props == {"InstanceType": "t3.medium", "SubnetId": {"Ref": "Sub"},
                     "SecurityGroupIds": [{"Fn::GetAtt": ["Sg", "GroupId"]}]}
