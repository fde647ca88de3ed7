"""A user's own packages, on a booted instance with the real bootstrap and the hardened unit:
``%pip install`` in a notebook kernel installs into the home (the image's venv is read-only), and
the server's kernel imports the package after the server restarts and on a new instance."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
import uuid

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from .conftest import client, needs_root, notebook_tags, wait_until
from .test_booted_instance import SECRET_PREFIX, server_answers, user_data
from .wheels import make_wheel

pytestmark = [needs_root, pytest.mark.slow]

UNIT = "ec2hub-singleuser.service"


class Kernels:
    """A Jupyter server's kernels over its REST and websocket API, as a notebook page uses them."""

    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def _request(self, method: str, path: str) -> dict:
        request = urllib.request.Request(
            f"{self.base}/api/{path}", method=method, data=b"{}" if method == "POST" else None,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def run(self, code: str, timeout: float = 240) -> str:
        """Start a kernel, run ``code`` in it, return what it printed (stdout and errors); shut it down."""
        kernel = self._request("POST", "kernels")["id"]
        try:
            return asyncio.run(asyncio.wait_for(self._execute(kernel, code), timeout))
        finally:
            self._request("DELETE", f"kernels/{kernel}")

    async def _execute(self, kernel: str, code: str) -> str:
        url = self.base.replace("http://", "ws://") + f"/api/kernels/{kernel}/channels"
        socket = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {self.token}"}))
        msg_id = uuid.uuid4().hex
        socket.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        output, status = [], None
        while status is None or not any(o is None for o in output):
            message = json.loads(await socket.read_message())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                output.append(content["text"])
            elif kind == "error":
                output.append("\n".join(content["traceback"]))
            elif kind == "execute_reply":
                status = content["status"]
            elif kind == "status" and content["execution_state"] == "idle":
                output.append(None)  # iopub is done with this request
        socket.close()
        return "".join(o for o in output if o)


def test_a_users_pip_install_outlives_a_server_restart_and_the_instance(aws, network, make_host, start_hub, efs_dir):
    iid, ip = "i-0b0000000000000c1", "10.0.1.60"
    host = make_host(iid, ip, notebook_tags("alice"))
    host.start(user_data())
    to_notebook = network.relay(listen=("127.0.0.1", 0), connect=(ip, 8888), connect_netns=host.netns)
    hub = start_hub(iid, f"http://127.0.0.1:{to_notebook.port}", SECRET_PREFIX)
    try:
        hub.api("POST", "/users/alice/server")
    except TimeoutError:  # the hub answers once the spawn is under way (10 s); a loaded machine may not
        pass
    try:
        wait_until(lambda: hub.api("GET", "/users/alice")["servers"].get("", {}).get("ready"), 240, "alice ready")
    except TimeoutError:
        journal = host.exec(["journalctl", "-u", UNIT, "--no-pager", "-n", "60"]).stdout
        raise AssertionError(f"alice's server never became ready:\n{journal}") from None
    assert host.wait_for_user_data() == 0, host.logs

    # A wheel on no index, in the user's home (EFS), as an upload through JupyterLab would put it.
    home = efs_dir / "home/jupyter-alice"
    owner = home.stat()
    wheel = make_wheel(home, "ec2hub_probe", "1.0", "ANSWER = 42\n")
    os.chown(wheel, owner.st_uid, owner.st_gid)
    token = client(aws, "ssm").get_parameter(Name=SECRET_PREFIX + iid, WithDecryption=True)["Parameter"]["Value"]
    kernels = Kernels(f"http://127.0.0.1:{to_notebook.port}/user/alice", json.loads(token)["JUPYTERHUB_API_TOKEN"])

    installed = kernels.run(f"%pip install --no-index --no-cache-dir /home/jupyter-alice/{wheel.name}")
    assert "Successfully installed ec2hub-probe-1.0" in installed, installed
    # Into the home, never the image's venv (read-only for the server; root's).
    (module,) = list(home.glob(".local/lib/python3*/site-packages/ec2hub_probe.py"))
    assert module.stat().st_uid == owner.st_uid

    host.exec(["systemctl", "restart", UNIT], check=True, timeout=120)
    wait_until(lambda: server_answers(network, ip, "alice"), 90, "the server after its restart")
    probe = "import ec2hub_probe; print(ec2hub_probe.ANSWER, ec2hub_probe.__file__)"
    assert kernels.run(probe).split() == ["42", f"/home/jupyter-alice/{module.relative_to(home)}"]

    # A new instance for the same user on the same EFS: the package is still theirs.
    host.terminate()
    new_iid = "i-0b0000000000000c2"
    ssm = client(aws, "ssm")
    ssm.put_parameter(Name=SECRET_PREFIX + new_iid, Type="SecureString", Overwrite=True, Value=token)
    again = make_host(new_iid, ip, notebook_tags("alice"))
    again.start(user_data())
    assert again.wait_for_user_data() == 0, again.logs
    wait_until(lambda: server_answers(network, ip, "alice"), 90, "the new instance's server")
    relay = network.relay(listen=("127.0.0.1", 0), connect=(ip, 8888), connect_netns=again.netns)
    kernels.base = f"http://127.0.0.1:{relay.port}/user/alice"
    assert kernels.run(probe).split()[0] == "42"
