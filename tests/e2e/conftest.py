"""End-to-end fixtures: the real sandbox (`python -m sandbox up`), driven through the hub's REST API
and the proxy, as a user and an admin would.

One sandbox serves the whole e2e session (it takes ~20 s to stand up). Its output is kept in
test-artifacts/sandbox.log and printed when a test failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_hub import ARTIFACTS, REPO, Hub

ENV_FILE = REPO / ".sandbox" / "env.json"

pytestmark = pytest.mark.slow


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("ec2hub-")}


@pytest.fixture(scope="session")
def sandbox(request):
    if os.geteuid() != 0:
        pytest.fail("the e2e tests run the sandbox, which needs root")
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "sandbox.log"
    ENV_FILE.unlink(missing_ok=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "up", "--port", "0", "--pending-s", "1"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not ENV_FILE.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the sandbox did not start:\n" + log_path.read_text()[-6000:])
        time.sleep(0.5)
    env = json.loads(ENV_FILE.read_text())
    env["log_path"] = log_path
    yield env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
    left = _namespaces()
    assert proc.returncode == 0, f"sandbox exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
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
