"""A person's click-through in a real headless Chromium (Debian's package, driven by Playwright):
log in, pick the GPU class, watch the progress, land in JupyterLab, stop the server from the hub's
home page. Screenshots land in test-artifacts/ when a step fails."""

from __future__ import annotations

import re
import time

import pytest
from e2e_hub import ARTIFACTS, Hub

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


PROGRESS_RECORDER = """
document.addEventListener('DOMContentLoaded', () => {
  const log = document.getElementById('progress-log');
  if (!log) return;
  const keep = () => sessionStorage.setItem('ec2hub-progress',
    (sessionStorage.getItem('ec2hub-progress') || '') + '\\n' + log.textContent);
  new MutationObserver(keep).observe(log, {childList: true, subtree: true, characterData: true});
});
"""


@pytest.fixture
def page(request):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        # Keep what the spawn-pending page's progress log showed: the page navigates to JupyterLab
        # as soon as the server is ready, so a test reading the log afterwards would find nothing.
        context.add_init_script(PROGRESS_RECORDER)
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
        failed = getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed
        if failed:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report


def test_user_logs_in_picks_gpu_reaches_jupyterlab_and_stops(sandbox, hub: Hub, page):
    user, password = "demo", sandbox["users"]["demo"]
    url = sandbox["hub_url"]

    page.goto(f"{url}/hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("input[type=submit], button[type=submit]")

    # The spawn form lists every class with its facts; choose the GPU one.
    page.wait_for_url(re.compile(r".*/hub/(spawn|home).*"))
    if "/hub/home" in page.url:
        page.click("#start")
    page.wait_for_selector("input[name=instance_class][value=gpu]")
    form_text = page.inner_text("form")
    assert "GPU (NVIDIA A10G)" in form_text and "A10G" in form_text
    page.check("input[name=instance_class][value=gpu]")
    started = time.monotonic()
    page.click("input[type=submit], button[type=submit]")

    # The progress page shows the spawner's real messages, then JupyterLab opens.
    page.wait_for_url(re.compile(rf".*/user/{user}/lab.*"), timeout=240_000)
    page.wait_for_selector(".jp-LabShell, #jp-main-dock-panel", timeout=120_000)
    print(f"click to JupyterLab: {time.monotonic() - started:.1f} s")
    progress = page.evaluate("() => sessionStorage.getItem('ec2hub-progress') || ''")
    assert re.search(r"Requesting g5\.xlarge in us-east-1[a-z]", progress), progress
    assert re.search(r"Instance i-[0-9a-f]+ pending", progress), progress
    assert "Waiting for the notebook server" in progress, progress

    [instance] = hub.instances(user, states=("running",))
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["ec2hub:class"] == "gpu" and instance["InstanceType"] == "g5.xlarge"

    # Stop from the hub's home page.
    # networkidle: home.js (loaded by requirejs after the load event) has bound #stop's handler;
    # a click before that does nothing. The handler hides #stop once the hub answered the stop.
    page.goto(f"{url}/hub/home", wait_until="networkidle")
    page.click("#stop")
    page.wait_for_selector("#stop", state="hidden", timeout=120_000)
    deadline = time.monotonic() + 60
    while hub.instance(instance["InstanceId"])["State"]["Name"] != "terminated":
        assert time.monotonic() < deadline, "the instance was not terminated after Stop My Server"
        time.sleep(0.5)
