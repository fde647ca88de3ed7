"""Per-class policies on the spawner object: what apply_user_options (a coroutine: it also checks
the budgets) sets for each class, and undoes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from jupyterhub.spawner import SpawnException


def _classes(platform):
    small, gpu, spot = (dict(c) for c in platform.classes)
    gpu.pop("allowed_groups")
    gpu.update(start_timeout=1200, stop_mode="stop", max_per_user=2, environment={"GPU_HINT": "a10g"})
    return [small, gpu, spot]


async def test_a_class_start_timeout_and_stop_mode_apply_to_its_spawns_only(new_spawner, platform):
    spawner = new_spawner(classes=_classes(platform))  # configured: start_timeout 15, stop_mode terminate
    await spawner.apply_user_options(spawner, {"profile": "gpu"})
    assert (spawner.start_timeout, spawner.effective_stop_mode, spawner.instance_class) == (1200, "stop", "gpu")
    assert spawner.user_options == {"profile": "gpu", "instance_class": "gpu"}
    assert spawner.orm_spawner.user_options == spawner.user_options
    assert spawner.get_env()["GPU_HINT"] == "a10g"

    await spawner.apply_user_options(spawner, {"instance_class": "small"})
    assert (spawner.start_timeout, spawner.effective_stop_mode) == (15, "terminate")
    assert "GPU_HINT" not in spawner.get_env()


async def test_max_per_user_counts_the_users_active_servers_of_that_class(new_spawner, platform):
    spawner = new_spawner(server="third", classes=_classes(platform))

    def running(name, slug, active=True):
        return SimpleNamespace(name=name, active=active, instance_class=slug)

    spawner.user.spawners = {
        "": running("", "gpu"), "old": running("old", "gpu", active=False), "cpu": running("cpu", "small"),
        "third": spawner,
    }
    await spawner.apply_user_options(spawner, {"profile": "gpu"})  # one running gpu server: the limit is 2
    spawner.user.spawners["second"] = running("second", "gpu")
    with pytest.raises(SpawnException) as refused:
        await spawner.apply_user_options(spawner, {"profile": "gpu"})
    assert refused.value.status_code == 403
    assert str(refused.value.log_message) == (
        "Class 'GPU (NVIDIA A10G)' allows 2 running server(s) per user, and you have 2 "
        "('second', your default server): stop one first, or pick another class."
    )
    await spawner.apply_user_options(spawner, {"instance_class": "small"})  # other classes are not limited
