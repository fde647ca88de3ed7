"""End-to-end fixtures: the real sandbox (`python -m sandbox up`), driven through the hub's REST API
and the proxy, as a user and an admin would.

One sandbox serves the whole e2e session (it takes ~20 s to stand up). Its output is kept in
test-artifacts/sandbox.log and printed when a test failed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from e2e_hub import ARTIFACTS, Hub, SandboxProcess

pytestmark = pytest.mark.slow


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("ec2hub-")}


@pytest.fixture(scope="session")
def sandbox(request):
    if os.geteuid() != 0:
        pytest.fail("the e2e tests run the sandbox, which needs root")
    log_path = ARTIFACTS / "sandbox.log"
    process = SandboxProcess(log_path, pending_s=1)
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
    assert "ec2hub-root" not in Path("/proc/mounts").read_text(), "the sandbox left overlay mounts behind"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        log_path = ARTIFACTS / "sandbox.log"
        if log_path.exists():
            report.sections.append(("sandbox log (tail)", log_path.read_text()[-6000:]))
    return report


@pytest.fixture(scope="session")
def hub(sandbox) -> Hub:
    return Hub(sandbox)
