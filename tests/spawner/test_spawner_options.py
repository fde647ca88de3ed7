"""Options: which classes a user may pick, the form, and every way user_options are refused."""

from __future__ import annotations

import pytest
from ec2spawner import options as opts
from ec2spawner.settings import ClassSettings
from jupyterhub.spawner import SpawnException


def _cls(slug, **kw):
    base = {"slug": slug, "display_name": slug.title(), "instance_types": ["t3.medium"],
            "ami": "ami-12345678", "launch_template_id": "lt-0123456789abcdef0"}
    return ClassSettings.model_validate({**base, **kw})


CLASSES = [
    _cls("small", default=True),
    _cls("gpu", instance_types=["g5.xlarge"], allowed_groups=["gpu", "staff"]),
    _cls("big", instance_types=["m7i.4xlarge"], market="spot", hourly_cost_usd=0.8064),
]


@pytest.mark.parametrize(
    ("options", "groups", "status", "message"),
    [
        ("small", (), 400, "user_options must be an object like {\"instance_class\": \"<class>\"}, not str"),
        ({"instance_class": "small", "image": "x"}, (), 400,
         "Unexpected option 'image': the only option is 'instance_class' (or its alias 'profile'; one of: small, big)"),
        ({"cpu": 4, "mem": 8}, (), 400,
         "Unexpected option 'cpu', 'mem': the only option is 'instance_class' (or its alias 'profile'; one of: small, big)"),
        ({f"k{i}": 1 for i in range(9)}, (), 400,
         "Unexpected option 'k0', 'k1', 'k2', 'k3', 'k4', ...: the only option is 'instance_class' (or its alias 'profile'; one of: small, big)"),
        ({"instance_class": 3}, (), 400, "'instance_class' must be a string (one of: small, big), not int"),
        ({"instance_class": ["small"]}, (), 400, "'instance_class' must be a string (one of: small, big), not list"),
        ({"instance_class": None}, (), 400, "'instance_class' must be a string (one of: small, big), not NoneType"),
        ({"instance_class": "x" * 65}, (), 400,
         "'instance_class' is too long (65 characters, at most 64): use one of: small, big"),
        ({"instance_class": "Small CPU"}, (), 400,
         "'instance_class' 'Small CPU' is not a class name (lowercase letters, digits and '-'): use one of: small, big"),
        ({"instance_class": "huge"}, (), 400, "Unknown instance class 'huge': use one of: small, big"),
        ({"instance_class": "gpu"}, ("students",), 403,
         "Instance class 'gpu' is not available to your groups: use one of: small, big"),
        ({"profile": "huge"}, (), 400, "Unknown instance class 'huge': use one of: small, big"),
        ({"profile": 3}, (), 400, "'profile' must be a string (one of: small, big), not int"),
        ({"instance_class": "small", "profile": "big"}, (), 400,
         "'instance_class' 'small' and 'profile' 'big' name different classes: give one (one of: small, big)"),
    ],
)
def test_refused_options_say_what_is_wrong_and_what_is_allowed(options, groups, status, message):
    with pytest.raises(opts.OptionsError) as info:
        opts.validate_user_options(options, CLASSES, groups)
    assert str(info.value) == message
    assert info.value.status_code == status


@pytest.mark.parametrize(
    ("options", "groups", "slug"),
    [
        ({}, (), "small"),
        (None, (), "small"),
        ({"instance_class": "big"}, (), "big"),
        ({"instance_class": "gpu"}, ("staff",), "gpu"),
        ({"profile": "big"}, (), "big"),
        ({"instance_class": "big", "profile": "big"}, (), "big"),
    ],
)
def test_accepted_options_pick_the_class(options, groups, slug):
    assert opts.validate_user_options(options, CLASSES, groups).slug == slug


def test_no_class_for_the_users_groups_is_a_403():
    only_gpu = [_cls("gpu", default=True, allowed_groups=["gpu"])]
    with pytest.raises(opts.OptionsError) as info:
        opts.validate_user_options({}, only_gpu, ["students"])
    assert info.value.status_code == 403
    assert "No instance class is available to you" in str(info.value)


def test_default_falls_back_to_first_allowed_class():
    classes = [_cls("gpu", default=True, allowed_groups=["gpu"]), _cls("small")]
    assert opts.validate_user_options({}, classes, []).slug == "small"


def test_form_data_becomes_user_options():
    assert opts.options_from_form({"instance_class": ["gpu"], "_xsrf": ["t"]}) == {"instance_class": "gpu"}
    assert opts.options_from_form({"instance_class": ["a", "b"]}) == {"instance_class": ["a", "b"]}


def test_form_entries_show_figures_spot_and_cost():
    facts = {"t3.medium": opts.TypeFacts(2, 4.0), "m7i.4xlarge": opts.TypeFacts(16, 64.0)}
    entries = opts.form_entries([CLASSES[0], CLASSES[2]], facts, "big")
    assert entries == [
        {"slug": "small", "display_name": "Small", "description": "", "instance_type": "t3.medium",
         "vcpus": 2, "memory_gib": 4.0, "gpus": 0, "gpu_name": "", "spot": False,
         "hourly_cost_usd": None, "selected": False},
        {"slug": "big", "display_name": "Big", "description": "", "instance_type": "m7i.4xlarge",
         "vcpus": 16, "memory_gib": 64.0, "gpus": 0, "gpu_name": "", "spot": True,
         "hourly_cost_usd": 0.8064, "selected": True},
    ]


async def test_form_lists_only_allowed_classes_with_facts_from_ec2(new_spawner):
    student = new_spawner(groups=["students"])
    form = await student.get_options_form()
    assert 'value="small"' in form and 'value="spot"' in form and 'value="gpu"' not in form
    assert "2 vCPU, 4.0 GiB" in form and "$0.0416/hour" in form and ">spot<" in form

    researcher = new_spawner("rita", groups=["gpu"])
    form = await researcher.get_options_form()
    assert 'value="gpu"' in form
    assert "4 vCPU, 16.0 GiB, 1 × NVIDIA A10G (g5.xlarge)" in form
    assert 'name="instance_class" value="small" checked' in form


async def test_spawner_refuses_bad_options_before_launching(new_spawner, live):
    spawner = new_spawner(groups=["students"])
    with pytest.raises(SpawnException) as info:
        await spawner._run_apply_user_options({"instance_class": "gpu"})
    assert info.value.status_code == 403
    assert info.value.reason == "invalid-options"
    assert info.value.message == "Instance class 'gpu' is not available to your groups: use one of: small, spot"
    spawner.user_options = {"instance_class": "nope"}
    with pytest.raises(SpawnException) as info:
        await spawner.start()
    assert info.value.status_code == 400
    assert live() == []


def test_recorded_options_name_the_class_under_both_keys():
    assert opts.recorded_options({"profile": "big"}, CLASSES[2]) == {"profile": "big", "instance_class": "big"}
    assert opts.recorded_options({}, CLASSES[0]) == {"instance_class": "small", "profile": "small"}
