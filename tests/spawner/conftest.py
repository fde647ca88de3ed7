"""Fixtures for the spawner tests: the AWS emulator (moto over HTTP on 127.0.0.1), a VPC with one
subnet per AZ and one launch template per class made directly with boto3, and a factory of
spawners with short timeouts (jupyterhub's ``new_spawner`` habit)."""

from __future__ import annotations

import os
import sys
import uuid
from types import SimpleNamespace

import boto3
import pytest
from spawner_testing import AZS, REGION, REPO, TOKEN, live_instances

sys.path.insert(0, str(REPO))  # the sandbox package lives at the repository root

# Set for the spawner tests only (and restored after them): other test folders share the session.
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
}


@pytest.fixture(scope="session")
def emulator():
    from ec2spawner.aws import Aws

    from sandbox.emulator import start_emulator

    saved = {k: os.environ.get(k) for k in [*_AWS_ENV, "AWS_ENDPOINT_URL", "AWS_PROFILE"]}
    os.environ.update(_AWS_ENV)
    os.environ.pop("AWS_PROFILE", None)
    em = start_emulator(pending_s=0.3)
    os.environ["AWS_ENDPOINT_URL"] = em.endpoint_url
    Aws._shared.clear()
    yield em
    em.stop()
    Aws._shared.clear()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def emu(emulator):
    """The emulator with default behaviour restored after the test."""
    yield emulator
    emulator.set_timing(pending_s=0.3, stopping_s=0, shutting_down_s=0)
    emulator.clear_capacity_faults()
    emulator.set_throttle(None)


@pytest.fixture(scope="session")
def ec2(emulator):
    return boto3.client("ec2", region_name=REGION, endpoint_url=emulator.endpoint_url)


@pytest.fixture(scope="session")
def efs(emulator):
    return boto3.client("efs", region_name=REGION, endpoint_url=emulator.endpoint_url)


@pytest.fixture(scope="session")
def ssm(emulator):
    return boto3.client("ssm", region_name=REGION, endpoint_url=emulator.endpoint_url)


@pytest.fixture(scope="session")
def dynamodb(emulator):
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=emulator.endpoint_url)


@pytest.fixture
def table(dynamodb):
    """A fresh spend ledger table (ec2spawner.spend), deleted after the test."""
    from ec2spawner.spend import SPEND_KEY, SPEND_SORT

    name = "spend-" + uuid.uuid4().hex[:8]
    dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": SPEND_KEY, "KeyType": "HASH"},
                                     {"AttributeName": SPEND_SORT, "KeyType": "RANGE"}],
                          AttributeDefinitions=[{"AttributeName": SPEND_KEY, "AttributeType": "S"},
                                                {"AttributeName": SPEND_SORT, "AttributeType": "S"}])
    yield name
    dynamodb.delete_table(TableName=name)


def _template(ec2, name: str, itype: str) -> str:
    data = {
        "ImageId": "ami-12345678",
        "InstanceType": itype,
        "UserData": "IyEvYmluL2Jhc2gKZWNobyBib290Cg==",  # "#!/bin/bash\necho boot", base64
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "InstanceMetadataTags": "enabled"},
    }
    return ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data)["LaunchTemplate"]["LaunchTemplateId"]


@pytest.fixture(scope="session")
def platform(ec2):
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = {
        az: ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i + 1}.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
        for i, az in enumerate(AZS)
    }
    classes = [
        {"slug": "small", "display_name": "Small CPU", "description": "Everyday notebooks",
         "instance_types": ["t3.medium", "t3a.medium"], "ami": "ami-12345678", "default": True,
         "hourly_cost_usd": 0.0416, "launch_template_id": _template(ec2, "small", "t3.medium")},
        {"slug": "gpu", "display_name": "GPU (NVIDIA A10G)", "description": "Deep learning",
         "instance_types": ["g5.xlarge", "g6.xlarge"], "ami": "ami-12345678", "allowed_groups": ["gpu"],
         "launch_template_id": _template(ec2, "gpu", "g5.xlarge")},
        {"slug": "spot", "display_name": "Small spot", "instance_types": ["t3.large"], "ami": "ami-12345678",
         "market": "spot", "launch_template_id": _template(ec2, "spot", "t3.large")},
    ]
    # The homes' file system: the spawner makes each user's access point on it.
    efs = boto3.client("efs", region_name=REGION, endpoint_url=ec2.meta.endpoint_url)
    efs_id = efs.create_file_system(CreationToken="ec2hub-homes", Encrypted=True)["FileSystemId"]
    return SimpleNamespace(vpc=vpc, subnets=subnets, classes=classes, efs_id=efs_id)


@pytest.fixture
async def hub_id(emulator):
    """A fresh hub id per test: watchers, sweepers and tags never mix between tests."""
    from ec2spawner.health import HealthProber
    from ec2spawner.spend import SpendRecorder
    from ec2spawner.sweeper import OrphanSweeper
    from ec2spawner.watcher import InstanceWatcher

    yield "test-" + uuid.uuid4().hex[:10]
    await OrphanSweeper.stop_all()
    await InstanceWatcher.stop_all()
    await HealthProber.stop_all()
    await SpendRecorder.stop_all()


def make_user(name: str = "alice", groups=()):
    return SimpleNamespace(name=name, url=f"/user/{name}/", id=1, escaped_name=name,
                           groups=[SimpleNamespace(name=g) for g in groups])


@pytest.fixture
def new_spawner(platform, hub_id):
    from ec2spawner.spawner import EC2Spawner
    from jupyterhub import orm
    from jupyterhub.objects import Hub

    def factory(user: str = "alice", server: str = "", groups=(), user_options=None, api_token=TOKEN, **traits):
        settings = {
            "region": REGION, "hub_id": hub_id, "classes": platform.classes, "subnets": platform.subnets,
            "secret_prefix": f"/ec2hub/{hub_id}/servers/", "efs_id": platform.efs_id,
            "fast_poll_interval": 0.05, "poll_interval": 1, "launch_visibility_grace": 5,
            "start_timeout": 15, "http_timeout": 5, "stop_timeout": 10, "sweep_orphans": False,
            # Emulated instances have 10.x addresses nothing may reach from here: no probes unless asked
            # (neither the health probes nor start()'s wait for the server's first answer).
            "health_check": False, "wait_for_server": False,
        }
        settings.update(traits)
        base_url = f"/user/{user}/{server + '/' if server else ''}"
        spawner = EC2Spawner(
            user=make_user(user, groups), orm_spawner=SimpleNamespace(name=server, server=orm.Server(base_url=base_url, proto="http", ip="", port=0, cookie_name="c")), hub=Hub(ip="10.0.0.5", port=8081, base_url="/hub/"),
            api_token=api_token, oauth_client_id=f"jupyterhub-user-{user}", **settings,
        )
        spawner.user_options = user_options or {}
        return spawner

    return factory


def secrets(ssm, hub_id: str) -> list[str]:
    found = ssm.describe_parameters(
        ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [f"/ec2hub/{hub_id}/"]}])
    return [p["Name"] for p in found["Parameters"]]


@pytest.fixture
def live(ec2, hub_id):
    """Instances of this test's hub that still exist (pending, running, stopping, stopped)."""
    return lambda user=None: live_instances(ec2, hub_id, user)


@pytest.fixture
def hub_secrets(ssm, hub_id):
    return lambda: secrets(ssm, hub_id)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Record each phase's outcome on the item, so server fixtures dump logs only on failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
