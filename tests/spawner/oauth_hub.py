"""A real hub (JupyterHub subprocess, configurable-http-proxy) signing users in through an identity
provider, as tests/spawner's sign-in tests run it: configured by ``apply_settings`` from a
settings document, spawning into the AWS emulator, everything on 127.0.0.1."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests as http
from ec2spawner.settings import HubSettings
from spawner_testing import REPO
from waiting import free_port, wait_until

API_TOKEN = "oauth-test-service-token-0123456789abcdef"


def hub_ports() -> dict[str, int]:
    return {name: free_port() for name in ("proxy", "proxy_api", "hub", "notebook")}


def local_hub_config(tmp: Path, ports: dict[str, int]) -> str:
    """Config lines of a hub that keeps its state in ``tmp`` and runs its proxy from node_modules."""
    return f"""c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.db_url = "sqlite:///{tmp / 'hub.sqlite'}"
c.JupyterHub.cookie_secret_file = {str(tmp / 'cookie_secret')!r}
c.JupyterHub.pid_file = {str(tmp / 'hub.pid')!r}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports['proxy_api']}"
c.ConfigurableHTTPProxy.command = [{str(REPO / 'node_modules/.bin/configurable-http-proxy')!r}]"""


@contextmanager
def oauth_hub(tmp: Path, ports: dict[str, int], settings: HubSettings, *, apply_kwargs: str, extra_config: str = "",
              env: dict[str, str] | None = None, emulator_url: str):
    """Run the hub until the block ends; yields an object with ``base``, ``api`` (a session with
    an admin service token) and ``log()``. ``apply_kwargs`` is Python source of the extra keyword
    arguments to ``apply_settings`` (the secrets the hub bootstrap would have fetched)."""
    base = f"http://127.0.0.1:{ports['proxy']}"
    (tmp / "settings.json").write_text(settings.model_dump_json())
    (tmp / "jupyterhub_config.py").write_text(f"""
from ec2spawner.hubconfig import apply_settings
from ec2spawner.settings import HubSettings

apply_settings(c, HubSettings.load({str(tmp / 'settings.json')!r}), hub_connect_ip="127.0.0.1", hub_ip="127.0.0.1",
               {apply_kwargs})
{local_hub_config(tmp, ports)}
c.JupyterHub.services = [{{"name": "test", "api_token": {API_TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "test", "scopes": ["admin:users", "read:servers"], "services": ["test"]}}]
c.EC2Spawner.notebook_port = {ports['notebook']}
c.EC2Spawner.sweep_orphans = False
{extra_config}
""")
    environment = {"AWS_ENDPOINT_URL": emulator_url, **(env or {})}
    api = http.Session()
    api.headers["Authorization"] = f"token {API_TOKEN}"
    with hub_process(tmp, base + "/hub/api/", environment, session=api) as log:
        yield type("Hub", (), {"base": base, "api": api, "log": staticmethod(log)})


@contextmanager
def hub_process(tmp: Path, ready_url: str, env: dict[str, str], session: http.Session | None = None):
    """``jupyterhub -f jupyterhub_config.py`` in ``tmp`` (with ``env`` over this environment and
    the venv's and node_modules' programs first on PATH) until the block ends, once ``ready_url``
    answers; yields a function that reads the hub's log. A hub that exits fails the test with its
    log; the log is printed when the block raises."""
    environment = {**os.environ, "PATH": f"{REPO / 'node_modules/.bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                   **env}
    log_path = tmp / "hub.log"
    log = open(log_path, "a")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", "jupyterhub_config.py"],
                            cwd=tmp, env=environment, stdout=log, stderr=subprocess.STDOUT)
    client = session or http.Session()

    def up():
        if proc.poll() is not None:
            pytest.fail("hub exited:\n" + log_path.read_text())
        try:
            return client.get(ready_url, timeout=2).ok
        except http.ConnectionError:
            return False

    failed = True
    try:
        wait_until(up, 60, "the hub")
        yield log_path.read_text
        failed = False
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        if failed:
            print("---- hub log ----\n" + log_path.read_text())


def sign_in_through(hub, chooser_url: str, login: str) -> tuple[http.Session, http.Response]:
    """The hub's login button, a stand-in provider's account chooser at ``chooser_url`` (its
    hidden fields plus ``login``), and back: the authorization-code flow, as a browser follows it."""
    browser = http.Session()
    page = browser.get(hub.base + "/hub/oauth_login", timeout=20)
    assert page.url.startswith(chooser_url), page.url
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    fields = {html.unescape(k): html.unescape(v) for k, v in hidden.items()}
    return browser, browser.post(page.url.split("?")[0], data={**fields, "login": login}, timeout=30)


def user_model(hub, name: str) -> dict:
    return hub.api.get(f"{hub.base}/hub/api/users/{name}", timeout=10).json()


def offered_classes(browser: http.Session, hub) -> list[str]:
    page = browser.get(hub.base + "/hub/spawn", timeout=20)
    return sorted(re.findall(r'name="instance_class"[^>]*value="([^"]+)"', page.text))


def spawn_request(browser: http.Session, hub, name: str, instance_class: str) -> http.Response:
    """The user's own spawn request with the session cookie (and its XSRF token)."""
    browser.get(hub.base + "/hub/home", timeout=10)
    return browser.post(f"{hub.base}/hub/api/users/{name}/server", timeout=30,
                        json={"user_options": {"instance_class": instance_class}},
                        headers={"X-XSRFToken": browser.cookies.get("_xsrf", path="/hub/") or ""})
