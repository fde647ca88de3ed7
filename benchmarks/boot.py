"""A notebook instance's own boot, stock image against baked image: user data start to server ready.

In booted sandbox instances (isolated hosts with systemd and cloud-init, as tests/bootstrap uses
them), with the real notebook user data (infra/userdata.py's assembly of bootstrap/) and a real
JupyterHub that spawns the server (tests/bootstrap's SecretSpawner: it writes the server's secret,
then waits for the server as the hub waits for an EC2 notebook):

- **stock**: an instance of a stock image, no venv. The user data's install.sh creates
  /opt/ec2hub/venv and pip-installs the pinned packages (jupyterhub, jupyterlab, jupyter_server,
  boto3 and their dependencies) from a package index the benchmark serves inside the VPC
  (:class:`sandbox.images.PackageIndex`, a directory of wheels, so it is measurable offline: PyPI's
  own latency and bandwidth are not in the figure);
- **baked**: an instance of an image that has the venv the stock instance installed (its
  /opt/ec2hub/venv after that boot, mounted read-only where a baked AMI has it, as the sandbox's
  class images are: :mod:`sandbox.images`). Its user data finds the venv and installs nothing.

The figure of each is instance-side: from the user data's first line ("ec2hub-notebook: start:")
to jupyter-server's "is running at" in the server's unit, both from the instance's own journal.
The wheels are fetched once into .cache/boot-wheels with pip (pip's normal configuration).

Run as root: ``.venv/bin/python benchmarks/boot.py [--runs 1]``. Prints one line per run, then
``stock_s=... baked_s=... ratio=...`` (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("EC2HUB_TEST_VPC", "ec2hub-boot")
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

from bootstrap.conftest import (
    NOTEBOOK_USER_DATA,
    REGION,
    STATE_ROOT,
    VPC_NAME,
    Hub,
    Network,
    client,
    notebook_tags,
)

from sandbox.host import AMI_VENV, IsolatedHost, bake_ami, cleanup_leftovers
from sandbox.images import PackageIndex, keep_layer
from sandbox.imds import ImdsData

WHEELS = REPO / ".cache" / "boot-wheels"
INSTALL_SH = REPO / "bootstrap" / "notebook" / "install.sh"
SECRET_PREFIX = "/ec2hub/ec2hub-test/servers/"
MARKS = (
    ("start", "cloud-init", "ec2hub-notebook: start:"),
    ("ready", "ec2hub-singleuser.service", "is running at"),
)


def pinned_packages(install_sh: Path = INSTALL_SH) -> list[str]:
    """install.sh's PACKAGES: what the stock path installs."""
    found = re.search(r"^PACKAGES=\(([^)]*)\)", install_sh.read_text(), re.MULTILINE)
    assert found, f"{install_sh}: no PACKAGES=(...)"
    return found.group(1).split()


def instance_python() -> str:
    """The version of the Python the instance's install.sh picks (common/venv.sh's find_python:
    the machine's, as the instance's root is the machine's)."""
    for candidate in ("python3.12", "python3.11", "python3.10", "python3"):
        program = shutil.which(candidate, path="/usr/local/bin:/usr/bin:/bin")
        if program:
            found = subprocess.run([program, "-c", "import platform; print(platform.python_version())"],
                                   capture_output=True, text=True, check=True).stdout.strip()
            if tuple(map(int, found.split(".")[:2])) >= (3, 10):
                return found
    raise SystemExit("no Python >= 3.10 on this machine: the instances need one")


def ensure_wheels(directory: Path = WHEELS) -> Path:
    """Wheels of the pinned packages and their dependencies for the instance's Python, fetched once."""
    stamp = directory / ".packages"
    version = instance_python()
    wanted = f"python {version}: " + " ".join(pinned_packages())
    if stamp.exists() and stamp.read_text() == wanted:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--only-binary=:all:", "--python-version", version, "--dest", str(directory),
                    *pinned_packages()], check=True)
    stamp.write_text(wanted)
    return directory


def journal_marks(host: IsolatedHost) -> dict[str, float]:
    """Wall-clock time of each of MARKS in the instance's journal (the first entry of each)."""
    out = subprocess.run(["journalctl", f"--directory={host.upper / 'var/log/journal'}", "-o", "json",
                          "--no-pager", "--output-fields=MESSAGE,SYSLOG_IDENTIFIER,_SYSTEMD_UNIT"],
                         capture_output=True, text=True, check=False).stdout
    marks: dict[str, float] = {}
    for line in out.splitlines():
        entry = json.loads(line)
        message = entry.get("MESSAGE")
        if not isinstance(message, str):
            continue
        for mark, source, text in MARKS:
            if mark not in marks and source in (entry.get("SYSLOG_IDENTIFIER"), entry.get("_SYSTEMD_UNIT")) \
                    and text in message:
                marks[mark] = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
    return marks


def boot_once(aws: str, network: Network, work: Path, iid: str, *, pip_config: str | None,
              venv: Path | None = None) -> tuple[float, IsolatedHost]:
    """Boot one notebook instance, spawn its server through a real hub; seconds from the user data's
    start to the server's, and the host (running; the caller stops it)."""
    ip = "10.0.1.60"
    host = IsolatedHost(
        iid, vpc=network.vpc, ip=ip,
        imds=ImdsData(instance_id=iid, region=REGION, tags=notebook_tags("alice", efs=None), role="ec2hub-notebook"),
        state_root=STATE_ROOT,
        root_setup=bake_ami(venv=venv, node_bin=None, aws_endpoint=network.aws_endpoint, region=REGION,
                            pip_config=pip_config),
    )
    to_notebook = network.relay(listen=("127.0.0.1", 0), connect=(ip, 8888), connect_netns=host.netns)
    hub = Hub(work / f"hub-{iid}", aws, iid, f"http://127.0.0.1:{to_notebook.port}", SECRET_PREFIX)
    relay = network.relay(listen=("10.0.1.1", 8081), listen_netns=network.vpc.netns, connect=("127.0.0.1", hub.api_port))
    try:
        try:
            hub.api("POST", "/users/alice/server")
        except TimeoutError:
            pass
        ssm = client(aws, "ssm")
        deadline = time.monotonic() + 60
        while True:  # the secret first, as EC2Spawner writes it right after RunInstances
            try:
                ssm.get_parameter(Name=SECRET_PREFIX + iid)
                break
            except ssm.exceptions.ParameterNotFound:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        host.start(NOTEBOOK_USER_DATA)
        deadline = time.monotonic() + 900
        while not hub.api("GET", "/users/alice")["servers"].get("", {}).get("ready"):
            failed = host.user_data_exit_status
            if failed or not host.running or time.monotonic() > deadline:  # no server will come
                raise RuntimeError(f"{iid}: user data exit status {failed}, running {host.running}: server not ready")
            time.sleep(0.2)
        status = host.wait_for_user_data(timeout=120)
        assert status == 0, host.logs
        marks = journal_marks(host)
        assert set(marks) == {"start", "ready"}, (marks, host.logs)
        print(f"{iid}: user data start to server ready {marks['ready'] - marks['start']:.2f} s", flush=True)
        return marks["ready"] - marks["start"], host
    except BaseException:
        sys.stderr.write(host.logs)
        host.terminate()
        raise
    finally:
        hub.stop()
        relay.stop()
        network.relays.remove(relay)


def run(aws: str, network: Network, work: Path, index: PackageIndex, n: int) -> dict[str, float]:
    stock_s, stock = boot_once(aws, network, work, f"i-0b00000000000{n:02d}51", pip_config=index.pip_config)
    try:
        console = stock.console_output
        assert "ec2hub-notebook: venv: installing into /opt/ec2hub/venv" in console, console[-3000:]
        stock.stop()
        image = keep_layer(stock.upper / AMI_VENV.lstrip("/"), work / f"image-{n}" / "venv")
    finally:
        stock.terminate()
    baked_s, baked = boot_once(aws, network, work, f"i-0b00000000000{n:02d}52", pip_config=None, venv=image)
    try:
        assert "nothing to install" in baked.console_output, baked.console_output[-3000:]
    finally:
        baked.terminate()
        shutil.rmtree(image, ignore_errors=True)
    return {"stock_s": stock_s, "baked_s": baked_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the instances are namespaces and containers")
    wheels = ensure_wheels()
    from moto.server import ThreadedMotoServer

    cleanup_leftovers(STATE_ROOT, VPC_NAME)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    aws = f"http://{host}:{port}"
    network = Network(aws)
    index = PackageIndex(network.vpc, wheels).start()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="ec2hub-boot-") as work:
            for n in range(args.runs):
                row = run(aws, network, Path(work), index, n)
                rows.append(row)
                print(f"run={n} stock_s={row['stock_s']:.2f} baked_s={row['baked_s']:.2f} "
                      f"load1={os.getloadavg()[0]:.1f}", flush=True)
    finally:
        index.stop()
        network.close()
        server.stop()
        cleanup_leftovers(STATE_ROOT, VPC_NAME)
    stock = statistics.median(r["stock_s"] for r in rows)
    baked = statistics.median(r["baked_s"] for r in rows)
    print(f"stock_s={stock:.2f} baked_s={baked:.2f} ratio={stock / baked:.1f} runs={len(rows)} "
          f"wheels={len(list(wheels.glob('*.whl')))} load1={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
