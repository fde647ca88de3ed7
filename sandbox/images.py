"""Image builds in the sandbox: EC2 Image Builder's part, played with isolated hosts.

The emulator has no Image Builder (moto implements none of it; its CloudFormation skips the
stack's components, recipes and pipelines). This module does what a pipeline of a baked class
does (infra/images.py, docs/ARCHITECTURE.md §18), with the stack's own component:

1. **Build**: boot a build host (an :class:`~sandbox.host.IsolatedHost` on the VPC, from the
   sandbox's base image: the machine's root and the checkout's venv, as every sandbox instance)
   and run the component's ``build`` phase (the script infra/userdata.py assembles from
   bootstrap/: ``install.sh image <the class's packages>``) in it, as root, as AWSTOE does through
   Run Command, then its ``validate`` phase. pip finds packages only where ``pip_config`` says (a
   :class:`PackageIndex` the sandbox serves inside the VPC): nothing leaves the machine.
2. **Keep the result**: the build host is shut down and what the component installed into
   /opt/ec2hub/venv (a writable overlay over the base venv during the build) becomes the image's
   layer, ``images_root/<image name>/venv``. Only the venv: the kernel refuses an overlay whose
   lower layers nest, so a layer of the whole root on the machine's disk cannot go under an
   instance's root (whose lower layer is ``/``). What a component writes elsewhere is not kept
   (ec2hub's writes only the venv and, on AL2023, the EFS client, which the sandbox's base has).
3. **Register** the image in the emulator's EC2 (RegisterImage, named
   ``ec2hub-<hub_id>-<slug>-<version>``, the component's content version; tags ``ec2hub:hub``,
   ``ec2hub:class``, ``ec2hub:image-version`` and :data:`LAYER_TAG`, its layers' directory), and
   write its id into ``/ec2hub/<hub_id>/images/<slug>``, as the distribution configuration does.

An instance whose image carries :data:`LAYER_TAG` boots with that layer (:func:`image_layers`,
called by :mod:`sandbox.dataplane`): its venv is the base venv with the image's layer on top,
read-only as a baked AMI's. A changed component (another
package list) is another version: a new image, and the parameter moves to it; an unchanged one is
no build (Image Builder starts none for an unchanged recipe either). Instances launched before
keep the image they were launched from.

The class's launch template names its image as ``resolve:ssm:<parameter>``. EC2 resolves that at
RunInstances; moto does not (the instance's ImageId is the ``resolve:ssm:`` text as written), so
the data plane resolves it when it first boots the instance (:func:`resolve_image`) and keeps that
image for the instance's life.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .host import REPO_VENV, IsolatedHost, bake_ami
from .imds import ImdsData
from .netns import Vpc, listen_in_netns

log = logging.getLogger(__name__)

TAG_HUB, TAG_CLASS = "ec2hub:hub", "ec2hub:class"
VERSION_TAG = "ec2hub:image-version"
# The directory of an image's layers on the machine (only the sandbox's images have it).
LAYER_TAG = "ec2hub-sandbox:layers"
RESOLVE_SSM = "resolve:ssm:"
BUILD_TIMEOUT_S = 900


def image_parameter_name(hub_id: str, slug: str) -> str:
    """``/ec2hub/<hub_id>/images/<slug>``: the contract of docs/ARCHITECTURE.md §6, as infra.images
    writes it (infra is not imported here: it loads the CDK)."""
    return f"/ec2hub/{hub_id}/images/{slug}"


@dataclass(frozen=True)
class Component:
    """A baked class's Image Builder component, as the deployed template has it."""

    hub_id: str
    slug: str
    version: str
    document: dict

    @property
    def image_name(self) -> str:
        return f"ec2hub-{self.hub_id}-{self.slug}-{self.version}"

    @property
    def parameter(self) -> str:
        return image_parameter_name(self.hub_id, self.slug)

    def phase(self, name: str) -> list[str]:
        """The bash commands of one phase's ExecuteBash steps, in order."""
        return [
            command
            for phase in self.document.get("phases", []) if phase.get("name") == name
            for step in phase.get("steps", []) if step.get("action") == "ExecuteBash"
            for command in step.get("inputs", {}).get("commands", [])
        ]


def stack_components(template: dict[str, Any]) -> list[Component]:
    """The components of the template's baked classes (``AWS::ImageBuilder::Component``, tagged
    with their hub and class by infra/images.py), with the template's own versions."""
    found = []
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") != "AWS::ImageBuilder::Component":
            continue
        props = resource.get("Properties", {})
        tags = props.get("Tags") or {}
        if TAG_HUB not in tags or TAG_CLASS not in tags:
            continue
        found.append(Component(tags[TAG_HUB], tags[TAG_CLASS], props["Version"], json.loads(props["Data"])))
    return sorted(found, key=lambda c: c.slug)


class PackageIndex:
    """A directory of wheels served over HTTP inside the VPC (a mirror of PyPI for the instances):
    ``PackageIndex(vpc, wheels).start()``; pip reads it through :attr:`pip_config`."""

    def __init__(self, vpc: Vpc, directory: Path, port: int = 8079) -> None:
        self.vpc, self.directory, self.port = vpc, Path(directory), port
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.vpc.gateways[0].ip}:{self.port}/"

    @property
    def pip_config(self) -> str:
        """/etc/pip.conf of a host that installs only from this index (plain HTTP inside the VPC,
        hence a trusted host, as a mirror without TLS is configured)."""
        return (f"[global]\nno-index = true\nfind-links = {self.url}\ntrusted-host = {self.vpc.gateways[0].ip}\n"
                "disable-pip-version-check = true\n")

    def start(self) -> PackageIndex:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # one line per wheel is noise
                pass

        handler = functools.partial(Quiet, directory=str(self.directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listen_in_netns(self.vpc.netns, "0.0.0.0", self.port)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="package-index", daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class ImageBuildFailed(RuntimeError):
    """The component failed on the build host; nothing was registered and the parameter is unchanged."""


def keep_layer(source: Path, dest: Path) -> Path:
    """Move an overlay layer (with its whiteouts and opaque directories) to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, dest)
    except OSError:  # another file system: copy, whiteout devices and xattrs included
        subprocess.run(["cp", "-a", str(source), str(dest)], check=True)
        shutil.rmtree(source, ignore_errors=True)
    return dest


@dataclass
class Builder:
    """Builds and registers class images in one sandbox (or test) VPC; see the module docstring.

    ``ec2``/``ssm`` are clients of the emulator; ``ip`` a free address of the VPC for the build
    host; ``pip_config`` the build host's /etc/pip.conf (a :class:`PackageIndex`'s); ``base_venv``
    the venv under the image's (the checkout's, as the sandbox's base image has it).
    """

    ec2: Any
    ssm: Any
    vpc: Vpc
    ip: str
    state_root: Path
    images_root: Path
    pip_config: str | None = None
    aws_endpoint: str | None = None
    region: str = "us-east-1"
    hidden_paths: Sequence[Path] = ()
    base_venv: Path = REPO_VENV
    on_output: Callable[[str], None] | None = None

    def existing(self, component: Component) -> str | None:
        """The id of the image this component version already made, if any."""
        found = self.ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": [component.image_name]}])["Images"]
        return found[0]["ImageId"] if found else None

    def build(self, component: Component) -> str:
        """The class's image for this component version: built, registered and published in the
        class's parameter when new; the existing one (parameter untouched) when already built."""
        image_id = self.existing(component)
        if image_id:
            log.info("images: %s is %s already (no change)", component.image_name, image_id)
            return image_id
        layers = self.images_root / component.image_name
        shutil.rmtree(layers, ignore_errors=True)
        self._run_component(component, layers)
        image_id = self.ec2.register_image(
            Name=component.image_name, Architecture="x86_64", RootDeviceName="/dev/xvda",
            VirtualizationType="hvm",
            Description=f"ec2hub class {component.slug}, component version {component.version} (sandbox build)",
        )["ImageId"]
        self.ec2.create_tags(Resources=[image_id], Tags=[
            {"Key": TAG_HUB, "Value": component.hub_id}, {"Key": TAG_CLASS, "Value": component.slug},
            {"Key": VERSION_TAG, "Value": component.version}, {"Key": LAYER_TAG, "Value": str(layers)},
        ])
        self.ssm.put_parameter(Name=component.parameter, Value=image_id, Type="String", DataType="aws:ec2:image",
                               Overwrite=True)
        log.info("images: %s registered as %s, %s names it", component.image_name, image_id, component.parameter)
        return image_id

    def _run_component(self, component: Component, layers: Path) -> None:
        name = f"build-{component.slug}"[:41]
        venv_upper = self.state_root / f"{name}.venv"
        shutil.rmtree(venv_upper, ignore_errors=True)
        host = IsolatedHost(
            name, vpc=self.vpc, ip=self.ip,
            imds=ImdsData(instance_id=f"i-{os.urandom(8).hex()[:17]}", region=self.region,
                          tags={TAG_HUB: component.hub_id, TAG_CLASS: component.slug}),
            state_root=self.state_root, hidden_paths=self.hidden_paths,
            root_setup=bake_ami(venv=self.base_venv, node_bin=None,
                                aws_endpoint=self.aws_endpoint, region=self.region,
                                venv_upper=venv_upper, pip_config=self.pip_config),
        )
        try:
            host.start()
            host.wait_for_boot(timeout=120)
            for phase in ("build", "validate"):
                script = "\n".join(component.phase(phase))
                done = host.exec(["/bin/bash", "-c", script], timeout=BUILD_TIMEOUT_S)
                if self.on_output:
                    self.on_output(done.stdout + done.stderr)
                if done.returncode != 0:
                    raise ImageBuildFailed(
                        f"{component.image_name}: {phase} phase failed (exit {done.returncode}): "
                        f"{(done.stdout + done.stderr)[-2000:]}")
            host.stop()  # an orderly shutdown: the layer is complete on disk
            keep_layer(venv_upper, layers / "venv")
        except BaseException:
            shutil.rmtree(layers, ignore_errors=True)
            raise
        finally:
            host.terminate()
            shutil.rmtree(venv_upper, ignore_errors=True)


def resolve_image(ssm, image_id: str) -> str:
    """The AMI id an instance of ``image_id`` runs: a ``resolve:ssm:<parameter>`` resolved as EC2
    does at launch (the parameter's current value), an AMI id as it is."""
    if not image_id.startswith(RESOLVE_SSM):
        return image_id
    name = image_id[len(RESOLVE_SSM):]
    return ssm.get_parameter(Name=name)["Parameter"]["Value"]


def image_layers(ec2, image_id: str) -> list[Path]:
    """The venv layers of a sandbox-built image (its :data:`LAYER_TAG`): [] for any other image
    (the sandbox's base image), also for one the emulator does not know."""
    try:
        [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
    except Exception:  # an unknown id: EC2 would not have launched it; moto does
        log.debug("images: %s is not in the emulator: the base image", image_id, exc_info=True)
        return []
    tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
    layer = Path(tags[LAYER_TAG]) / "venv" if LAYER_TAG in tags else None
    if layer is not None and not layer.is_dir():
        raise FileNotFoundError(f"image {image_id}: its layer {layer} is gone (a sandbox of an earlier run?)")
    return [layer] if layer else []



def build_stack_images(sandbox) -> dict[str, str]:
    """The sandbox runner's hook, once its data plane is up: build every baked class's image of the
    deployed stack (its template in ``.sandbox/cdk.out``), installing the classes' packages from the
    wheels in ``.sandbox/wheels`` (served in the VPC; nothing is fetched from PyPI), and let the data
    plane resolve the classes' ``resolve:ssm:`` images. Returns slug -> image id of those built; a
    class whose build failed is said and keeps its base image."""
    from .deploy import find_stack
    from .runner import ENDPOINT_PORT, HOSTS_ROOT, REGION, STATE_DIR, say

    assembly = STATE_DIR / "cdk.out"
    manifest = json.loads((assembly / "manifest.json").read_text())
    names = [name for name, art in manifest.get("artifacts", {}).items()
             if art.get("type") == "aws:cloudformation:stack"
             and art.get("properties", {}).get("stackName", name) == sandbox.deployment.stack_name]
    artifact = find_stack(assembly, names[0] if names else None)  # the deployed stack's, of several
    components = stack_components(json.loads((assembly / artifact["properties"]["templateFile"]).read_text()))
    ssm = sandbox.client("ssm")
    sandbox.dataplane.ssm = ssm
    if not components:
        return {}
    images_root, wheels = STATE_DIR / "images", STATE_DIR / "wheels"
    shutil.rmtree(images_root, ignore_errors=True)  # an earlier run's: its emulator is gone
    wheels.mkdir(parents=True, exist_ok=True)
    subnet = sandbox.vpc.gateways[0]
    index = PackageIndex(sandbox.vpc, wheels).start()
    builder = Builder(
        ec2=sandbox.client("ec2"), ssm=ssm, vpc=sandbox.vpc,
        ip=str(subnet.network.broadcast_address - 1),  # the far end of the subnet, where EC2 assigns last
        state_root=HOSTS_ROOT, images_root=images_root, pip_config=index.pip_config,
        aws_endpoint=f"http://{subnet.ip}:{ENDPOINT_PORT}", region=REGION, hidden_paths=(STATE_DIR,),
    )
    built = {}
    try:
        for component in components:
            say(f"image build of class {component.slug}: {component.image_name} (packages from {wheels})")
            try:
                built[component.slug] = builder.build(component)
            except ImageBuildFailed as error:
                say(f"  failed, the class launches its base image: {error}")
                continue
            say(f"  {built[component.slug]}, in {component.parameter}")
    finally:
        index.stop()
    return built
