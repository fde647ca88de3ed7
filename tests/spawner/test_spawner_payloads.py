"""Request payloads are pure functions: compared to literals."""

import importlib.util

import pytest
from ec2spawner import payloads as req
from spawner_testing import REPO


def _bootstrap_notebook():
    """The notebook launcher as the instance runs it (a package of its own, not installed here)."""
    import sys

    sys.path.insert(0, str(REPO / "bootstrap"))
    try:
        spec = importlib.util.find_spec("ec2hub_bootstrap.notebook")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bootstrap"))


bootstrap_notebook = _bootstrap_notebook()

TAGS = [
    {"Key": "ec2hub:hub", "Value": "hub1"},
    {"Key": "ec2hub:user", "Value": "alice"},
    {"Key": "ec2hub:server", "Value": "gpu-work"},
    {"Key": "ec2hub:class", "Value": "gpu"},
    {"Key": "ec2hub:secret-prefix", "Value": "/ec2hub/hub1/servers/"},
    {"Key": "ec2hub:efs", "Value": "fs-1"},
    {"Key": "ec2hub:efs-access-point", "Value": "fsap-1"},
    {"Key": "Name", "Value": "ec2hub-hub1-alice-gpu-work"},
]


def test_instance_tags_follow_the_contract():
    assert req.instance_tags(hub_id="hub1", user="alice", server="gpu-work", class_slug="gpu",
                             secret_prefix="/ec2hub/hub1/servers/", efs_id="fs-1",
                             access_point_id="fsap-1") == TAGS
    no_efs = req.instance_tags(hub_id="hub1", user="bob", server="", class_slug="small",
                               secret_prefix="/p/", efs_id=None)
    assert {t["Key"]: t["Value"] for t in no_efs} == {
        "ec2hub:hub": "hub1", "ec2hub:user": "bob", "ec2hub:server": "", "ec2hub:class": "small",
        "ec2hub:secret-prefix": "/p/", "Name": "ec2hub-hub1-bob"}


def test_name_tag_is_truncated():
    assert len(req.instance_name("h", "u" * 300, "")) == 255


def test_launch_params_on_demand_and_spot():
    assert req.launch_params(launch_template_id="lt-1", instance_type="g5.xlarge", subnet_id="subnet-1",
                             tags=TAGS, token="tok", spot=False) == {
        "LaunchTemplate": {"LaunchTemplateId": "lt-1", "Version": "$Default"},
        "InstanceType": "g5.xlarge",
        "SubnetId": "subnet-1",
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": "tok",
        "TagSpecifications": [{"ResourceType": "instance", "Tags": TAGS},
                              {"ResourceType": "volume", "Tags": TAGS}],
    }
    spot = req.launch_params(launch_template_id="lt-1", instance_type="t3.large", subnet_id="s",
                             tags=[], token="t", spot=True)
    assert spot["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}


def test_client_token_is_stable_per_attempt_and_distinct_otherwise():
    args = {"hub_id": "h", "user": "u", "server": "", "attempt": "a1", "instance_type": "t3.medium",
            "subnet_id": "s1"}
    token = req.client_token(**args)
    assert token == req.client_token(**args) and len(token) <= 64 and token.isascii()
    for change in ({"attempt": "a2"}, {"subnet_id": "s2"}, {"instance_type": "t3a.medium"}, {"server": "x"}):
        assert req.client_token(**{**args, **change}) != token


def test_filters_and_secret_payloads():
    assert req.hub_filters("hub1") == [
        {"Name": "tag:ec2hub:hub", "Values": ["hub1"]},
        {"Name": "tag-key", "Values": ["ec2hub:user"]},  # notebooks only, never the hub host
        {"Name": "instance-state-name",
         "Values": ["pending", "running", "stopping", "stopped", "shutting-down", "terminated"]},
    ]
    arn = req.instance_arn(partition="aws-cn", region="cn-north-1", account="111", instance_id="i-1")
    assert arn == "arn:aws-cn:ec2:cn-north-1:111:instance/i-1"
    assert req.secret_put_params(name="/p/i-1", env={"B": "2", "A": "1"}, hub_id="hub1", arn=arn) == {
        "Name": "/p/i-1", "Type": "SecureString", "Value": '{"A": "1", "B": "2"}', "Tier": "Intelligent-Tiering",
        "Tags": [{"Key": "ec2hub:hub", "Value": "hub1"}, {"Key": "ec2hub:instance-arn", "Value": arn}],
    }
    assert req.secret_list_filters("/p/") == [{"Key": "Name", "Option": "BeginsWith", "Values": ["/p/"]}]


def test_subnet_order_spreads_across_azs_and_plan_tries_every_az_per_type():
    subnets = {"a": "s-a", "b": "s-b", "c": "s-c"}
    assert req.ordered_subnets(subnets) == [("a", "s-a"), ("b", "s-b"), ("c", "s-c")]
    assert req.ordered_subnets(subnets, {"a": 2, "b": 1}) == [("c", "s-c"), ("b", "s-b"), ("a", "s-a")]
    assert req.launch_plan(["x", "y"], [("a", "s-a"), ("b", "s-b")]) == [
        ("x", "a", "s-a"), ("x", "b", "s-b"), ("y", "a", "s-a"), ("y", "b", "s-b")]


def test_rename_tags_name_the_new_user_and_server():
    assert req.rename_tags(hub_id="hub1", user="bob", server="train") == [
        {"Key": "ec2hub:user", "Value": "bob"},
        {"Key": "ec2hub:server", "Value": "train"},
        {"Key": "Name", "Value": "ec2hub-hub1-bob-train"},
    ]
    assert req.server_key("u" * 300, "") == ("u" * 256, "")


def test_access_point_params_make_the_users_home_entered_only_as_its_uid():
    uid = req.home_uid("jupyter-alice")
    params = req.access_point_params(hub_id="hub1", file_system_id="fs-0123456789abcdef0", unix="jupyter-alice")
    assert params == {
        "ClientToken": params["ClientToken"],
        "FileSystemId": "fs-0123456789abcdef0",
        "PosixUser": {"Uid": uid, "Gid": uid},
        "RootDirectory": {"Path": "/home/jupyter-alice",
                          "CreationInfo": {"OwnerUid": uid, "OwnerGid": uid, "Permissions": "0700"}},
        "Tags": [{"Key": "ec2hub:hub", "Value": "hub1"}, {"Key": "ec2hub:unix-user", "Value": "jupyter-alice"},
                 {"Key": "Name", "Value": "ec2hub-hub1-jupyter-alice"}],
    }
    # The same home, the same token (a retry makes no second access point); another home, another.
    assert params["ClientToken"] == req.access_point_params(
        hub_id="hub1", file_system_id="fs-0123456789abcdef0", unix="jupyter-alice")["ClientToken"]
    assert len(params["ClientToken"]) <= 64
    assert params["ClientToken"] != req.access_point_params(
        hub_id="hub1", file_system_id="fs-0123456789abcdef0", unix="jupyter-bob")["ClientToken"]
    assert req.access_point_owner({"Tags": params["Tags"], "LifeCycleState": "available"}, "hub1") == "jupyter-alice"
    assert req.access_point_owner({"Tags": params["Tags"], "LifeCycleState": "deleting"}, "hub1") is None
    assert req.access_point_owner({"Tags": params["Tags"]}, "hub2") is None


@pytest.mark.parametrize("name", ["alice", "Alice", "o'brien", "josé", "a" * 40, "dev-ops", "a--b", "-", "名前"])
def test_the_spawner_and_the_notebook_bootstrap_derive_the_same_unix_name(name):
    """The access point's home (/home/<unix name>) is the home the bootstrap mounts."""
    assert req.unix_name(name) == bootstrap_notebook.unix_name(name)
