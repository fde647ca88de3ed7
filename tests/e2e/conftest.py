"""End-to-end fixtures: the real sandbox (`python -m sandbox up`), driven through the hub's REST API
and the proxy, as a user and an admin would.

One sandbox serves the whole e2e session (it takes ~20 s to stand up, and 30 to 40 s more for its
second account: two more CLI synths, of the target stack and of the hub stack with its outputs).
Its output is kept in test-artifacts/sandbox.log and printed when a test failed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from e2e_hub import ARTIFACTS, ENV_FILE, HOSTS, Hub, SandboxProcess

from sandbox.host import CGROUP_HIERARCHIES, NSPAWN_PROPAGATE
from sandbox.runner import VPC_NAME

pytestmark = pytest.mark.slow


def _namespaces() -> set[str]:
    """The sandbox's namespaces (its VPC's name starts them all; other test runs use other names)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(VPC_NAME)}


def _runtime_leftovers() -> list[str]:
    """cgroups and runtime directories systemd-nspawn and the VPC's dnsmasq leave unless torn down."""
    return sorted(str(p) for d in (*CGROUP_HIERARCHIES, NSPAWN_PROPAGATE, Path("/run")) if d.is_dir()
                  for p in d.iterdir() if p.name.startswith(VPC_NAME))


@pytest.fixture(scope="session")
def sandbox(request):
    if os.geteuid() != 0:
        pytest.fail("the e2e tests run the sandbox, which needs root")
    log_path = ARTIFACTS / "sandbox.log"
    # Two accounts: the hub's and a target account B, for tests/e2e/test_accounts.py; the other
    # tests use the hub's account as in a one-account deployment.
    process = SandboxProcess(log_path, pending_s=1, two_accounts=True)
    try:
        env = process.start()
    except RuntimeError as error:
        pytest.fail(str(error))
    env["log_path"] = log_path
    yield env
    returncode = process.stop()
    left = _namespaces()
    assert returncode == 0, f"sandbox exited with {returncode}:\n{log_path.read_text()[-4000:]}"
    assert not left, f"the sandbox left namespaces behind: {left}"
    assert not _runtime_leftovers(), "the sandbox left cgroups or runtime directories behind"
    assert "ec2hub-root" not in Path("/proc/mounts").read_text(), "the sandbox left overlay mounts behind"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        log_path = ARTIFACTS / "sandbox.log"
        if log_path.exists():
            report.sections.append(("sandbox log (tail)", log_path.read_text()[-6000:]))
        if ENV_FILE.exists():  # the hub logs to its instance's journal, as on EC2
            hub_id = json.loads(ENV_FILE.read_text())["hub_instance_id"]
            journal = HOSTS / hub_id / "upper/var/log/journal"
            hub_log = subprocess.run(["journalctl", f"--directory={journal}", "--unit=ec2hub-hub.service",
                                      "--output=cat", "--no-pager"], capture_output=True, text=True, check=False)
            report.sections.append(("hub journal (tail)", hub_log.stdout[-8000:]))
    return report


@pytest.fixture(scope="session")
def hub(sandbox) -> Hub:
    return Hub(sandbox)
