"""The hub's REST API and the user's server behind the proxy, as the e2e tests drive them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
ENV_FILE = REPO / ".sandbox" / "env.json"
HOSTS = Path("/var/tmp/ec2hub-hosts")  # the sandbox's instances' disks and consoles (sandbox.runner)
NETNS_PREFIX = "/run/netns/ec2hub-vpc-"


class Instance:
    """A running sandbox instance seen from this machine: its console, and commands run inside it
    (in the namespaces of its PID 1, its systemd), as an operator's SSM session would."""

    def __init__(self, instance_id: str):
        self.instance_id = instance_id

    @property
    def console(self) -> str:
        try:
            return (HOSTS / self.instance_id / "console.log").read_text(errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    @property
    def boots(self) -> int:
        return self.console.count("ec2hub-host: booting")

    def pid1(self) -> int:
        """The instance's systemd: PID 1 of its own PID namespace, in the instance's network namespace."""
        net = os.stat(NETNS_PREFIX + self.instance_id).st_ino
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit() or os.stat(proc / "ns" / "net").st_ino != net:
                    continue
                nspid = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("NSpid:"))
            except (OSError, StopIteration):
                continue
            if len(nspid.split()) > 2 and nspid.split()[-1] == "1":
                return int(proc.name)
        raise AssertionError(f"{self.instance_id} has no running systemd")

    def exec(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["nsenter", f"--target={self.pid1()}", "--mount", "--pid", "--net", "--uts", "--ipc", "--root", "--wd",
             "--", *argv], capture_output=True, text=True, timeout=timeout, check=False)

    def unit(self, unit: str) -> dict[str, str]:
        """``systemctl show`` of a unit, as a dict."""
        shown = self.exec("systemctl", "show", unit).stdout
        return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)

    def exposure(self, unit: str) -> float:
        """``systemd-analyze security`` of the loaded unit: its overall exposure level."""
        last = self.exec("systemd-analyze", "security", "--no-pager", unit).stdout.strip().splitlines()[-1]
        assert "Overall exposure level" in last, last
        return float(last.split(":")[1].split()[0])


class SandboxProcess:
    """`python -m sandbox up` in the background, as a newcomer runs it, with its output in a file."""

    def __init__(self, log_path: Path, *, pending_s: float, two_accounts: bool = False):
        self.log_path = log_path
        self.pending_s = pending_s
        self.two_accounts = two_accounts  # also target account B (python -m sandbox up --two-accounts)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> dict:
        """Start it and wait for `.sandbox/env.json`; RuntimeError with the log's tail if it dies."""
        ENV_FILE.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox", "up", "--port", "0", "--pending-s", str(self.pending_s),
                 *(["--two-accounts"] if self.two_accounts else [])],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not ENV_FILE.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("the sandbox did not start:\n" + self.log_path.read_text()[-6000:])
            time.sleep(0.2)
        return json.loads(ENV_FILE.read_text())

    def stop(self) -> int:
        """SIGTERM (its Ctrl-C path) and wait for the teardown; its exit status."""
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


class Hub:
    """The hub's REST API with the sandbox's admin token, and the proxy behind it."""

    def __init__(self, env: dict):
        self.url = env["hub_url"]
        self.token = env["api_token"]
        self.env = env
        kw = {"region_name": env["region"], "endpoint_url": env["aws_endpoint_url"],
              "aws_access_key_id": "sandbox", "aws_secret_access_key": "sandbox"}
        self.ec2 = boto3.client("ec2", **kw)
        self.ssm = boto3.client("ssm", **kw)
        self.route53 = boto3.client("route53", **kw)

    def request(self, method: str, path: str, body=None, *, timeout: float = 30, raw: bool = False):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            payload, status = error.read(), error.code
        if raw:
            return status, payload
        try:
            return status, (json.loads(payload) if payload.strip() else None)
        except ValueError:  # the proxy's own error page while the hub restarts, say
            return status, payload.decode(errors="replace")

    def api(self, method: str, path: str, body=None, **kw):
        return self.request(method, "/hub/api" + path, body, **kw)

    @staticmethod
    def quote(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    def create_user(self, name: str) -> None:
        status, reply = self.api("POST", f"/users/{self.quote(name)}")
        assert status in (201, 409), (status, reply)

    def server_model(self, name: str, server: str = "") -> dict | None:
        status, user = self.api("GET", f"/users/{self.quote(name)}")
        assert status == 200, (status, user)
        return user["servers"].get(server)

    def start(self, name: str, options: dict | None = None, server: str = "", timeout: float = 240) -> dict:
        path = f"/users/{self.quote(name)}/servers/{self.quote(server)}" if server else f"/users/{self.quote(name)}/server"
        status, reply = self.api("POST", path, {"user_options": options or {}})
        assert status in (201, 202), (status, reply)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.server_model(name, server)
            if model and model.get("ready"):
                return model
            if model is None and status == 202:
                raise AssertionError(f"the spawn of {name!r} failed; see the sandbox log")
            time.sleep(0.5)
        raise AssertionError(f"{name!r} was not ready within {timeout:.0f} s: {self.server_model(name, server)}")

    def stop(self, name: str, server: str = "", timeout: float = 120) -> None:
        path = f"/users/{self.quote(name)}/servers/{self.quote(server)}" if server else f"/users/{self.quote(name)}/server"
        status, reply = self.api("DELETE", path)
        assert status in (202, 204), (status, reply)
        deadline = time.monotonic() + timeout
        while self.server_model(name, server) is not None:
            assert time.monotonic() < deadline, f"{name!r} did not stop within {timeout:.0f} s"
            time.sleep(0.5)

    def instances(self, user: str, states=("pending", "running", "stopping", "stopped", "shutting-down")) -> list[dict]:
        # Matched here rather than with a tag:ec2hub:user filter: moto reads filter values as
        # patterns, so a user name with regex characters would match nothing.
        filters = [{"Name": "tag-key", "Values": ["ec2hub:user"]},
                   {"Name": "instance-state-name", "Values": list(states)}]
        reservations = self.ec2.describe_instances(Filters=filters)["Reservations"]
        return [i for r in reservations for i in r["Instances"]
                if {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get("ec2hub:user") == user]

    def instance(self, instance_id: str) -> dict:
        return self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]

    def all_notebook_instances(self) -> list[dict]:
        filters = [{"Name": "tag-key", "Values": ["ec2hub:user"]},
                   {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
        reservations = self.ec2.describe_instances(Filters=filters)["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    def secret_exists(self, name: str) -> bool:
        try:
            self.ssm.get_parameter(Name=name, WithDecryption=False)
            return True
        except self.ssm.exceptions.ParameterNotFound:
            return False

    def secret_prefix(self) -> str:
        settings = self.ssm.get_parameter(Name=f"/ec2hub/{self.env['stack_name']}/settings")["Parameter"]["Value"]
        return json.loads(settings)["secret_prefix"]

    # -- the user's server, through the proxy --------------------------------------------------------

    def server_api(self, name: str, method: str, path: str, body=None, server: str = ""):
        prefix = f"/user/{self.quote(name)}/" + (f"{self.quote(server)}/" if server else "")
        return self.request(method, prefix + "api" + path, body)

    def run_code(self, name: str, code: str, server: str = "", timeout: float = 60) -> str:
        """Start a kernel on the user's server, run ``code`` over the websocket, return its stdout."""
        status, kernel = self.server_api(name, "POST", "/kernels", {"name": "python3"}, server=server)
        assert status == 201, (status, kernel)
        try:
            return asyncio.run(self._execute(name, server, kernel["id"], code, timeout))
        finally:
            self.server_api(name, "DELETE", f"/kernels/{kernel['id']}", server=server)

    async def _execute(self, name: str, server: str, kernel_id: str, code: str, timeout: float) -> str:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        prefix = f"/user/{self.quote(name)}/" + (f"{self.quote(server)}/" if server else "")
        url = self.url.replace("http", "ws", 1) + prefix + f"api/kernels/{kernel_id}/channels"
        conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {self.token}"}))
        msg_id = uuid.uuid4().hex
        conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": "e2e", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        out = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                raw = await asyncio.wait_for(conn.read_message(), timeout=deadline - time.monotonic())
                assert raw is not None, "kernel websocket closed"
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "stream":
                    out.append(msg["content"]["text"])
                elif kind == "error":
                    raise AssertionError("kernel error: " + "\n".join(msg["content"]["traceback"]))
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    return "".join(out)
        finally:
            conn.close()
        raise AssertionError(f"no reply from the kernel within {timeout:.0f} s")
