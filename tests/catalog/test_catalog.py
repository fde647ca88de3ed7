"""The catalog schema: what an admin may write in instance-classes.yaml and what each mistake says."""

from pathlib import Path

import pytest
import yaml
from ec2spawner.catalog import CatalogError, load_catalog, parse_catalog

REPO = Path(__file__).resolve().parents[2]

SMALL = {"slug": "small", "display_name": "Small", "instance_types": ["t3.medium"], "default": True}
BIG = {"slug": "big", "display_name": "Big", "instance_types": ["m5.4xlarge"]}
DEFAULTS = {"ami": "ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"}


def catalog(*classes, defaults=DEFAULTS):
    return {"defaults": defaults, "classes": list(classes)}


def test_shipped_catalog_is_valid_with_one_default():
    cat = load_catalog(REPO / "instance-classes.yaml")
    assert cat.slugs == ["small", "large-cpu", "gpu"]
    assert cat.default_class.slug == "small"
    gpu = cat.get("gpu")
    assert gpu.instance_types[0] == "g5.xlarge"
    assert gpu.ami.startswith("ssm:/aws/service/deeplearning/")


def test_defaults_apply_and_classes_override_them():
    cat = parse_catalog(catalog(SMALL, {**BIG, "volume_gb": 200}, defaults={**DEFAULTS, "volume_gb": 50}))
    assert cat.get("small").volume_gb == 50
    assert cat.get("big").volume_gb == 200
    assert cat.get("big").ami == DEFAULTS["ami"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (catalog({**SMALL, "instance_types": ["t9.huge"]}),
         "class 'small': instance_types: 't9.huge' is not an EC2 instance type"),
        (catalog(SMALL, {**BIG, "slug": "small"}),
         "class 'small': slug: 'small' is used by two classes"),
        (catalog(SMALL, {**BIG, "default": True}),
         "default: exactly one class must have default: true (found 'small', 'big')"),
        (catalog({**SMALL, "default": False}, BIG),
         "default: exactly one class must have default: true (found none)"),
        (catalog({**SMALL, "slug": "Small_1"}), "class 'Small_1': slug: String should match pattern"),
        (catalog({**SMALL, "volume_gb": 2}), "class 'small': volume_gb: Input should be greater than or equal to 8"),
        (catalog({**SMALL, "colour": "red"}), "class 'small': colour: unknown field (allowed: "),
        (catalog({**SMALL, "ami": "ubuntu"}), "class 'small': ami: String should match pattern"),
        (catalog({**SMALL, "market": "reserved"}), "class 'small': market: Input should be 'on-demand' or 'spot'"),
        (catalog({**SMALL, "instance_types": []}), "class 'small': instance_types: List should have at least 1 item"),
        (catalog({**SMALL, "instance_types": ["t3.medium", "t3.medium"]}),
         "class 'small': instance_types: 't3.medium' is listed twice"),
        (catalog({k: v for k, v in SMALL.items() if k != "display_name"}),
         "class 'small': display_name: required field is missing"),
        (catalog({**SMALL, "slug": None}), "class #1: slug: Input should be a valid string"),
        (catalog(SMALL, defaults={**DEFAULTS, "slug": "x"}), "defaults: 'slug' cannot be a default"),
        ({"classes": [SMALL], "extra": 1}, "unknown top-level key 'extra'"),
        (catalog({**SMALL, "environment": {"MY-VAR": "x"}}),
         "class 'small': environment: 'MY-VAR' is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
        (catalog({**SMALL, "environment": {"JUPYTERHUB_API_TOKEN": "x"}}),
         "class 'small': environment: 'JUPYTERHUB_API_TOKEN': the hub sets the JUPYTERHUB_* variables itself"),
        (catalog({**SMALL, "environment": {"JPY_API_TOKEN": "x"}}),
         "class 'small': environment: 'JPY_API_TOKEN': the hub sets the JPY_* variables itself"),
        (catalog({**SMALL, "environment": {"A": 1}}), "class 'small': environment.A: Input should be a valid string"),
        (catalog({**SMALL, "start_timeout": 5}),
         "class 'small': start_timeout: Input should be greater than or equal to 10"),
        (catalog({**SMALL, "stop_mode": "hibernate"}),
         "class 'small': stop_mode: Input should be 'terminate' or 'stop'"),
        (catalog({**SMALL, "max_per_user": 0}),
         "class 'small': max_per_user: Input should be greater than or equal to 1"),
        ({"defaults": DEFAULTS}, "classes: must be a list of classes"),
        ([SMALL], "the top level must be a mapping"),
    ],
)
def test_bad_catalog_names_file_class_and_field(data, message):
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data, source="instance-classes.yaml")
    text = str(caught.value)
    assert text.startswith("instance-classes.yaml: ")
    assert message in text
    assert "\n" not in text


def test_file_that_is_not_yaml_reports_the_line(tmp_path):
    path = tmp_path / "instance-classes.yaml"
    path.write_text("classes:\n  - slug: [unclosed\n")
    with pytest.raises(CatalogError, match=r"^instance-classes.yaml: not valid YAML at line \d+"):
        load_catalog(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        load_catalog(tmp_path / "instance-classes.yaml")


def test_allowed_groups_gate_classes():
    cat = parse_catalog(catalog(SMALL, {**BIG, "allowed_groups": ["gpu-users"]}))
    assert cat.get("small").allows(set())
    assert not cat.get("big").allows({"students"})
    assert cat.get("big").allows({"students", "gpu-users"})


def test_round_trip_through_yaml_keeps_everything(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(catalog(SMALL, {**BIG, "market": "spot", "hourly_cost_usd": 0.5})))
    big = load_catalog(path).get("big")
    assert big.is_spot and big.hourly_cost_usd == 0.5


def test_per_class_policies_and_their_defaults():
    cat = parse_catalog(catalog(
        SMALL,
        {**BIG, "environment": {"OMP_NUM_THREADS": "16"}, "start_timeout": 900, "max_per_user": 1},
        defaults={**DEFAULTS, "stop_mode": "stop"},
    ))
    small, big = cat.get("small"), cat.get("big")
    assert (small.environment, small.start_timeout, small.max_per_user, small.stop_mode) == ({}, None, None, "stop")
    assert (big.environment, big.start_timeout, big.max_per_user, big.stop_mode) == (
        {"OMP_NUM_THREADS": "16"}, 900, 1, "stop",
    )


BAKED = {**BIG, "image": "baked", "packages": ["pandas==2.3.3", "scikit-learn>=1.7", "torch[opt]~=2.9"]}


def test_a_baked_class_keeps_its_packages_and_stock_is_the_default():
    parsed = parse_catalog(catalog(SMALL, BAKED))
    assert (parsed.get("small").image, parsed.get("small").baked, parsed.get("small").packages) == ("stock", False, [])
    assert parsed.get("big").baked and parsed.get("big").packages == BAKED["packages"]


@pytest.mark.parametrize(
    ("big", "message"),
    [
        ({**BIG, "packages": ["pandas"]},
         "class 'big': packages: needs image: baked (they are installed when the image is built)"),
        ({**BAKED, "image": "fancy"}, "class 'big': image: Input should be 'stock' or 'baked'"),
        ({**BAKED, "packages": ["--index-url=https://mirror.example/simple"]},
         ("class 'big': packages: '--index-url=https://mirror.example/simple' is not a requirement "
         "(pip options are not allowed)")),
        ({**BAKED, "packages": ["pandas>="]}, "class 'big': packages: 'pandas>=' is not a pip requirement: "),
        ({**BAKED, "packages": ["pandas;rm -rf /"]},
         "class 'big': packages: 'pandas;rm -rf /': a requirement is one word of at most 200 characters"),
        ({**BAKED, "packages": ["numpy", "numpy"]}, "class 'big': packages: 'numpy' is listed twice"),
        ({**BAKED, "packages": ["x"] * 51}, "class 'big': packages: List should have at most 50 items"),
    ],
)
def test_bad_image_fields_name_class_and_field(big, message):
    with pytest.raises(CatalogError) as caught:
        parse_catalog(catalog(SMALL, big), source="instance-classes.yaml")
    text = str(caught.value)
    assert text.startswith("instance-classes.yaml: " + message), text
    assert "\n" not in text


# -- targets: classes that launch in another account and region -----------------------------------

RESEARCH = {"account": "222222222222", "region": "eu-central-1",
            "role_arn": "arn:aws:iam::222222222222:role/ec2hub-research", "external_id": "ec2hub-research-7f3a"}


def with_targets(targets, *classes):
    return {**catalog(*classes), "targets": targets}


def test_a_class_names_a_target_defined_once_and_others_stay_in_the_hubs_account():
    cat = parse_catalog(with_targets({"research": RESEARCH}, SMALL, {**BIG, "target": "research"},
                                     {**BIG, "slug": "big-b", "target": "research"}))
    assert cat.get("small").target is None
    assert cat.targets["research"].account == "222222222222"
    assert cat.targets["research"].role_name == "ec2hub-research"
    assert [c.slug for c in cat.classes_of("research")] == ["big", "big-b"]
    assert [c.slug for c in cat.classes_of(None)] == ["small"]


def test_a_catalog_without_targets_is_as_before():
    assert parse_catalog(catalog(SMALL)).targets == {}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({**RESEARCH, "account": "1234"},
         "target 'research': account: '1234' is not an AWS account id (12 digits, quoted in YAML)"),
        ({**RESEARCH, "account": 222222222222},
         "target 'research': account: 222222222222 must be quoted ('222222222222')"),
        ({**RESEARCH, "region": "Frankfurt"},
         "target 'research': region: 'Frankfurt' is not an AWS region name (like 'eu-central-1')"),
        ({**RESEARCH, "role_arn": "arn:aws:iam::333333333333:role/ec2hub-research"},
         ("target 'research': role_arn: 'arn:aws:iam::333333333333:role/ec2hub-research' is not in account "
          "222222222222 (the target's account)")),
        ({**RESEARCH, "role_arn": "ec2hub-research"},
         "target 'research': role_arn: 'ec2hub-research' is not an IAM role ARN"),
        ({**RESEARCH, "external_id": "has space"}, "target 'research': external_id: not an sts:AssumeRole external id"),
        ({**RESEARCH, "vpc": "vpc-1"},
         "target 'research': vpc: unknown field (allowed: account, external_id, region, role_arn)"),
        ({k: v for k, v in RESEARCH.items() if k != "external_id"},
         "target 'research': external_id: required field is missing"),
    ],
)
def test_bad_target_names_the_target_and_field(target, message):
    with pytest.raises(CatalogError) as caught:
        parse_catalog(with_targets({"research": target}, SMALL, {**BIG, "target": "research"}))
    assert str(caught.value).startswith(f"instance-classes.yaml: {message}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_targets({"lab": RESEARCH}, SMALL, {**BIG, "target": "research"}),
         "class 'big': target: 'research' is not one of the catalog's targets (defined: lab)"),
        (catalog(SMALL, {**BIG, "target": "research"}),
         "class 'big': target: 'research' is not one of the catalog's targets (defined: none)"),
        (with_targets({"Research Lab": RESEARCH}, SMALL),
         "targets: 'Research Lab' is not a target name (lower-case letters, digits and '-')"),
        (with_targets(["research"], SMALL), "targets: must be a mapping of target name to account"),
        (with_targets({"research": RESEARCH}, SMALL, {**BIG, "target": "research", "image": "baked"}),
         "class 'big': image: baked is not supported with a target yet (use stock)"),
    ],
)
def test_a_class_target_must_be_defined(data, message):
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data)
    assert str(caught.value).startswith(f"instance-classes.yaml: {message}")
