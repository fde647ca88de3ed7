"""A baked class's image built in the sandbox (sandbox.images) and booted by the data plane: the
class's own Image Builder component (infra.images) runs in a build host, the image is registered in
the emulator and named by the class's SSM parameter, which its launch template resolves. A change
of the class's packages is a new image; a new server boots from it, an earlier one keeps its own."""

from __future__ import annotations

import base64
import json

import pytest
from ec2spawner.catalog import parse_catalog

from infra.images import (
    component_document,
    content_version,
    image_parameter_name,
    launch_image,
)
from sandbox.dataplane import DataPlane
from sandbox.images import (
    LAYER_TAG,
    VERSION_TAG,
    Builder,
    Component,
    ImageBuildFailed,
    PackageIndex,
)
from sandbox.images import image_parameter_name as sandbox_parameter_name

from .conftest import (
    AWS_ENDPOINT_PORT,
    NOTEBOOK_USER_DATA,
    REGION,
    STATE_ROOT,
    client,
    needs_root,
    notebook_tags,
)
from .wheels import make_wheel

pytestmark = [needs_root, pytest.mark.slow, pytest.mark.timeout(600)]

HUB = "ec2hub-test"
VENV_PYTHON = "/opt/ec2hub/venv/bin/python"


def component(packages: list[str]) -> Component:
    """The class's component as the synthesized template has it (infra.images)."""
    [cls] = parse_catalog({"classes": [{
        "slug": "probe", "display_name": "Probe", "description": "a baked class", "instance_types": ["t3.medium"],
        "ami": "ami-0123456789abcdef0", "default": True, "image": "baked", "packages": packages,
    }]}).classes
    data = component_document(cls)
    assert launch_image(HUB, cls) == f"resolve:ssm:{sandbox_parameter_name(HUB, cls.slug)}"
    return Component(HUB, cls.slug, content_version(data), json.loads(data))


def probe(host) -> str:
    """What the instance's venv imports as ec2hub_probe (its ANSWER), or the import's error."""
    done = host.exec([VENV_PYTHON, "-c", "import ec2hub_probe; print(ec2hub_probe.ANSWER)"])
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


@pytest.fixture
def images(aws, network, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "ec2hub_probe", "1.0", "ANSWER = 'one'\n")
    make_wheel(wheels, "ec2hub_probe", "2.0", "ANSWER = 'two'\n")
    index = PackageIndex(network.vpc, wheels).start()
    ec2, ssm = client(aws, "ec2"), client(aws, "ssm")
    builder = Builder(ec2=ec2, ssm=ssm, vpc=network.vpc, ip="10.0.1.250", state_root=STATE_ROOT,
                      images_root=tmp_path / "images", pip_config=index.pip_config,
                      aws_endpoint=network.aws_endpoint, region=REGION)
    yield builder
    index.stop()


@pytest.fixture
def launch(aws, network, tmp_path):
    """RunInstances from the class's launch template (ImageId resolve:ssm:, the notebook user data)
    in a subnet of the test VPC, then the data plane boots the instance."""
    ec2, ssm = client(aws, "ec2"), client(aws, "ssm")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    template = ec2.create_launch_template(LaunchTemplateName=f"{HUB}-probe", LaunchTemplateData={
        "ImageId": f"resolve:ssm:{image_parameter_name(HUB, 'probe')}",
        "InstanceType": "t3.medium",
        "UserData": base64.b64encode(NOTEBOOK_USER_DATA).decode(),
    })["LaunchTemplate"]["LaunchTemplateId"]
    plane = DataPlane(ec2=ec2, ssm=ssm, vpc=network.vpc, region=REGION, endpoint_port=AWS_ENDPOINT_PORT,
                      efs_root=tmp_path / "efs", state_root=STATE_ROOT)

    def start(user: str):
        tags = notebook_tags(user, efs=None)
        [instance] = ec2.run_instances(
            LaunchTemplate={"LaunchTemplateId": template, "Version": "$Default"}, SubnetId=subnet,
            MinCount=1, MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["Instances"]
        ssm.put_parameter(Name=tags["ec2hub:secret-prefix"] + instance["InstanceId"], Type="SecureString",
                          Value=json.dumps({"JUPYTERHUB_API_TOKEN": "no-hub-in-this-test"}), Overwrite=True)
        host = plane.boot(instance["InstanceId"])
        assert host.wait_for_user_data(timeout=180) == 0, host.logs
        # No hub here: the server's unit would only fail and restart; what matters is the venv.
        host.exec(["systemctl", "stop", "ec2hub-singleuser.service", "ec2hub-activity.service"])
        return instance, host

    yield start
    plane.close()


def test_a_package_change_is_a_new_image_for_new_servers_while_running_ones_keep_theirs(aws, images, launch):
    ssm, ec2 = client(aws, "ssm"), client(aws, "ec2")
    parameter = image_parameter_name(HUB, "probe")
    assert sandbox_parameter_name(HUB, "probe") == parameter  # the contract, written twice

    first = images.build(component(["ec2hub_probe==1.0"]))
    assert ssm.get_parameter(Name=parameter)["Parameter"]["Value"] == first
    [image] = ec2.describe_images(ImageIds=[first])["Images"]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert image["Name"] == f"ec2hub-{HUB}-probe-{tags[VERSION_TAG]}" and LAYER_TAG in tags
    assert images.build(component(["ec2hub_probe==1.0"])) == first  # unchanged: no new build

    instance, old = launch("alice")
    # moto keeps the template's resolve:ssm: as the instance's ImageId; the data plane resolved it.
    assert instance["ImageId"] == f"resolve:ssm:{parameter}"
    assert ("ec2hub-notebook: venv: /opt/ec2hub/venv has jupyterhub-singleuser and boto3, jupyterlab: nothing "
            "to install (image built with jupyterhub==6.1.1 jupyterlab==4.6.6 jupyter_server==2.21.1 boto3==1.44.8 "
            "ec2hub_probe==1.0)") in old.console_output
    assert probe(old) == "one"

    second = images.build(component(["ec2hub_probe==2.0"]))
    assert second != first
    assert ssm.get_parameter(Name=parameter)["Parameter"]["Value"] == second
    _, new = launch("bob")
    assert "nothing to install" in new.console_output and "ec2hub_probe==2.0)" in new.console_output
    assert probe(new) == "two"

    assert probe(old) == "one"  # the running server keeps the image it was launched from

    # A build that fails (a package no index has) registers nothing and leaves the class's image.
    with pytest.raises(ImageBuildFailed, match="build phase failed") as failed:
        images.build(component(["ec2hub_probe==3.0"]))
    assert "pip install failed" in str(failed.value)
    assert ssm.get_parameter(Name=parameter)["Parameter"]["Value"] == second
    assert len(ec2.describe_images(Owners=["self"])["Images"]) == 2
