"""How `make test` shares the suite between its two pytest-xdist workers.

Each test file runs whole on one worker, so a module's fixtures (a hub, a lab, a synthesized
template) are made once. Tests that share fixed names on this machine run on one worker, one after
another: the sandbox and the end-to-end tests (the namespace ``ec2hub-vpc``, ``.sandbox/``,
``/var/tmp/ec2hub-hosts``) and the bootstrap tests (their VPC ``ec2hub-bt``, from
``EC2HUB_TEST_VPC``). The longest groups are handed out first, so that no worker is left with a
long group at the end while the other has nothing to do. Without ``-n`` only the order applies.

(xdist's own ``--dist loadgroup`` cannot do this with pytest 9: it renames ``item._nodeid``, which
pytest 9 no longer reads, so every test became its own group. Hence a scheduler of our own.)
"""

from __future__ import annotations

import pytest

# Directories whose tests share fixed names on the machine: one group each.
SHARED_NAMES = {"e2e": "ec2hub-vpc", "sandbox": "ec2hub-vpc", "bootstrap": "bootstrap"}
# Handed out first, longest first (minutes on this machine); then every other file, as collected.
FIRST = ["ec2hub-vpc", "bootstrap", "tests/chaos/test_chaos.py"]


def group_of(nodeid: str) -> str:
    """``tests/<dir>/<file>.py::test...`` -> its directory's shared group, else its file."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    return SHARED_NAMES.get(parts[1], path) if len(parts) > 2 and parts[0] == "tests" else path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {group: i for i, group in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(FIRST)))  # stable: files keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        """xdist's scheduling by scope (a scope runs whole on one worker), our groups as scopes."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByGroup(config, log)
