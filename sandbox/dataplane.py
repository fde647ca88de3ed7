"""The simulated EC2 data plane: every instance the emulator runs boots as an isolated host.

The emulator (moto plus :mod:`sandbox.emulator`) is EC2's control plane: it answers RunInstances,
keeps state and emits an event on each state change. This module is the data plane behind it:

- ``running``: the instance boots as an :class:`~sandbox.host.IsolatedHost` (systemd as PID 1)
  at its private IP on the VPC bridge, with an IMDSv2 endpoint that serves its id, placement, tags
  and user data (the bytes RunInstances was given, read back through DescribeInstanceAttribute);
  cloud-init fetches the user data from there and runs it, once per instance id. A GPU instance
  type (DescribeInstanceTypes' GpuInfo) gets as many NVIDIA device nodes as it has GPUs;
- ``rebooting`` (RebootInstances): ``systemctl reboot`` inside; the same root volume boots again;
- ``stopped``: ``systemctl poweroff`` inside (every unit stops in order), its root volume (the
  overlay's upper layer) stays;
- ``running`` again after a stop: it boots from the same root volume. cloud-init does not run the
  user data again (same instance id): what it installed, enabled units and fstab entries, brings
  the services back, as on EC2;
- ``terminated``: its processes and its root volume are gone;
- **the instance's image**: an image the sandbox built for a baked class (:mod:`sandbox.images`)
  boots with its layer over the venv; any other image is the sandbox's base (the machine's root
  and the checkout's venv). A launch template's ``resolve:ssm:<parameter>`` ImageId, which EC2
  resolves at RunInstances and moto keeps as written, is resolved here, when the instance first
  boots (its running host keeps that image through stops and starts, as an instance keeps its AMI);
- **a host that powers itself off** (``systemctl poweroff`` inside, e.g. the notebook's idle
  backstop) is stopped or terminated in EC2, as its ``InstanceInitiatedShutdownBehavior`` says
  (DescribeInstanceAttribute; EC2's default is ``stop``), as EC2 does when an instance's OS halts.

Boots run on one worker thread per instance so the emulator's threads never wait on a host.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from .host import EfsAccessPoint, IsolatedHost, bake_ami
from .images import image_layers, resolve_image
from .imds import ImdsData
from .netns import Vpc

log = logging.getLogger(__name__)

EFS_TAG = "ec2hub:efs"
ACCESS_POINT_TAG = "ec2hub:efs-access-point"


def subnet_gateways(ec2, vpc_id: str) -> list[str]:
    """The VPC router address of every subnet (the first host address, as AWS reserves it)."""
    gateways = []
    for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]:
        network = ipaddress.ip_network(subnet["CidrBlock"])
        gateways.append(f"{network.network_address + 1}/{network.prefixlen}")
    return sorted(gateways)


@dataclass
class InstanceFacts:
    """What EC2 knows about an instance that the data plane needs to boot it."""

    instance_id: str
    private_ip: str
    availability_zone: str
    instance_type: str
    tags: dict[str, str]
    user_data: bytes
    role: str | None
    gpus: int = 0
    image_id: str = ""

    @classmethod
    def describe(cls, ec2, instance_id: str) -> InstanceFacts:
        reservation = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
        instance = reservation["Instances"][0]
        encoded = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        # As launched (gzip or not): cloud-init unpacks it, as on EC2.
        user_data = base64.b64decode(encoded.get("UserData", {}).get("Value", "") or "")
        profile = instance.get("IamInstanceProfile", {}).get("Arn", "")
        return cls(
            instance_id=instance_id,
            private_ip=instance["PrivateIpAddress"],
            availability_zone=instance["Placement"]["AvailabilityZone"],
            instance_type=instance["InstanceType"],
            tags={t["Key"]: t["Value"] for t in instance.get("Tags", [])},
            user_data=user_data,
            role=profile.rsplit("/", 1)[-1] or None,
            gpus=gpu_count(ec2, instance["InstanceType"]),
            image_id=instance.get("ImageId") or "",
        )


def gpu_count(ec2, instance_type: str) -> int:
    """How many GPUs EC2 says ``instance_type`` has (DescribeInstanceTypes' GpuInfo; 0 for none)."""
    try:
        [info] = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except Exception:  # an unknown type (moto validates none by default): no GPU
        log.debug("data plane: no instance type data for %s", instance_type, exc_info=True)
        return 0
    return sum(gpu.get("Count", 0) for gpu in info.get("GpuInfo", {}).get("Gpus", []))


def role_credentials(iam, sts):
    """``instance_credentials`` as EC2 gives them: a session of the instance profile's role (in
    the account of ``iam`` and ``sts``), named by the instance id."""

    def credentials(facts: InstanceFacts) -> dict:
        profile = iam.get_instance_profile(InstanceProfileName=facts.role)["InstanceProfile"]
        return sts.assume_role(RoleArn=profile["Roles"][0]["Arn"], RoleSessionName=facts.instance_id)["Credentials"]

    return credentials


class DataPlane:
    """Boots, stops and terminates isolated hosts as the emulator's instances change state."""

    def __init__(
        self,
        *,
        ec2,
        vpc: Vpc,
        region: str,
        efs=None,
        endpoint_port: int,
        efs_root: Path,
        state_root: Path,
        console_dir: Path | None = None,
        hidden_paths: tuple[Path, ...] = (),
        ssm=None,
        account: str | None = None,
        instance_credentials=None,
    ) -> None:
        """``account``: the AWS account whose instances this data plane boots (``ec2`` is a
        client of it); the emulator's events of other accounts' instances are another data
        plane's (None: every event). ``instance_credentials(facts)``: the instance role's
        credentials (STS ``Credentials``) its IMDS serves; None: dummy keys, which the emulator
        takes for its default account's."""
        self.account = account
        self.instance_credentials = instance_credentials
        self.ec2 = ec2
        self.ssm = ssm  # resolves resolve:ssm: image ids (baked classes); None: they boot the base image
        self.efs = efs  # the same emulator's EFS, for the access points instances mount; None: no EFS
        self.vpc = vpc
        self.region = region
        self.endpoint_port = endpoint_port  # the AWS emulator's port at every subnet gateway
        self.efs_root = efs_root
        self.state_root = state_root
        self.console_dir = console_dir
        self.hidden_paths = hidden_paths  # machine directories no instance may see (the sandbox's state)
        self.hosts: dict[str, IsolatedHost] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        # Events for one instance are handled in order; different instances in parallel.
        self._queues: dict[str, list[dict]] = {}
        self._busy: set[str] = set()
        # Instances the data plane itself is stopping or terminating (an EC2 call did it): their
        # hosts powering off is no instance-initiated shutdown.
        self._ending: set[str] = set()
        self._closed = False

    # -- events -----------------------------------------------------------------------------------

    def handle(self, event: dict) -> None:
        """The emulator listener: queue the event for its instance's worker."""
        if event["state"] not in ("running", "rebooting", "stopped", "terminated"):
            return
        if self.account is not None and event.get("account", self.account) != self.account:
            return
        iid = event["instance_id"]
        with self._lock:
            if self._closed:
                return
            self._queues.setdefault(iid, []).append(event)
            if iid in self._busy:
                return
            self._busy.add(iid)
        threading.Thread(target=self._work, args=(iid,), name=f"dataplane-{iid}", daemon=True).start()

    def _work(self, iid: str) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(iid) or []
                if not queue or self._closed:
                    self._busy.discard(iid)
                    self._queues.pop(iid, None)
                    return
                event = queue.pop(0)
            try:
                self._apply(event)
            except Exception as error:  # one instance's failure must not stop the data plane
                log.exception("data plane: %s %s failed", iid, event["state"])
                self.errors[iid] = f"{event['state']}: {error}"

    def _apply(self, event: dict) -> None:
        iid, state = event["instance_id"], event["state"]
        host = self.hosts.get(iid)
        if state == "running":
            if host is not None:
                if not host.running:
                    log.info("data plane: %s starts again from its root volume", iid)
                    host.start()
                    # After the start: the last boot's watcher, waking late, sees it running again.
                    with self._lock:
                        self._ending.discard(iid)
                    self._watch_power(iid, host)
                return
            self._watch_power(iid, self.boot(iid))
        elif state == "rebooting" and host is not None and host.running:
            log.info("data plane: %s reboots", iid)
            host.reboot()
        elif state == "stopped" and host is not None:
            log.info("data plane: %s stopped", iid)
            with self._lock:
                self._ending.add(iid)
            host.stop()
        elif state == "terminated":
            with self._lock:
                self._ending.add(iid)
            host = self.hosts.pop(iid, None)
            if host is not None:
                log.info("data plane: %s terminated", iid)
                self._terminate(host)

    # -- hosts --------------------------------------------------------------------------------------

    def boot(self, instance_id: str) -> IsolatedHost:
        facts = InstanceFacts.describe(self.ec2, instance_id)
        gateway = self.vpc.gateway_for(facts.private_ip)
        image, layers = self.image(facts.image_id)
        imds = ImdsData(
            instance_id=instance_id,
            region=self.region,
            availability_zone=facts.availability_zone,
            tags=facts.tags,
            role=facts.role or "ec2hub-instance",
            instance_type=facts.instance_type,
        )
        if self.account is not None:
            imds.account_id = self.account
        if self.instance_credentials is not None and facts.role:
            credentials = self.instance_credentials(facts)
            imds.access_key_id = credentials["AccessKeyId"]
            imds.secret_access_key = credentials["SecretAccessKey"]
            imds.session_token = credentials["SessionToken"]
        host = IsolatedHost(
            instance_id,
            vpc=self.vpc,
            ip=facts.private_ip,
            imds=imds,
            state_root=self.state_root,
            access_points=self.access_points(facts.tags),
            hidden_paths=self.hidden_paths,
            root_setup=bake_ami(aws_endpoint=f"http://{gateway.ip}:{self.endpoint_port}", region=self.region,
                                venv_layers=layers),
            gpus=facts.gpus,
        )
        self.hosts[instance_id] = host
        log.info("data plane: booting %s (%s, image %s) at %s", instance_id, facts.instance_type, image,
                 facts.private_ip)
        host.start(user_data=facts.user_data or None)  # none: IMDS answers 404, cloud-init runs nothing
        return host

    def image(self, image_id: str) -> tuple[str, list[Path]]:
        """The AMI an instance launched with ``image_id`` runs, and that image's venv layers."""
        if image_id.startswith("resolve:ssm:") and self.ssm is None:
            log.warning("data plane: %s: no SSM client to resolve it; booting the base image", image_id)
            return image_id, []
        resolved = resolve_image(self.ssm, image_id)
        return resolved, image_layers(self.ec2, resolved)

    def access_points(self, tags: dict[str, str]) -> list[EfsAccessPoint]:
        """The EFS access point the instance's tags name, as EFS would serve it: only its root
        directory, under the file system's directory (``efs_root/<fs id>``). One the emulator does
        not know gives the instance nothing (its mount fails, as on EFS)."""
        efs_id, ap = tags.get(EFS_TAG), tags.get(ACCESS_POINT_TAG)
        if not efs_id or not ap or self.efs is None:
            return []
        try:
            [described] = self.efs.describe_access_points(AccessPointId=ap)["AccessPoints"]
        except Exception as error:  # noqa: BLE001 (a wrong id, as the instance's mount will say)
            log.warning("data plane: EFS access point %s: %s", ap, error)
            return []
        if described["FileSystemId"] != efs_id:
            return []
        return [EfsAccessPoint.make(self.efs_root / efs_id, described)]

    def _watch_power(self, iid: str, host: IsolatedHost) -> None:
        """When this boot of ``host`` powers off by itself, tell EC2, as its OS halting would."""

        def watch() -> None:
            status = host.wait_for_power_off()
            with self._lock:
                if self._closed or iid in self._ending or host.running:  # running: booted again since
                    return
                self._ending.add(iid)
            try:
                answer = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
                behaviour = answer.get("InstanceInitiatedShutdownBehavior", {}).get("Value") or "stop"
                log.info("data plane: %s powered itself off (status %s): %s, its shutdown behaviour", iid, status,
                         behaviour)
                host.stop()  # its network and IMDS go now, as the machine is off
                if behaviour == "terminate":
                    self.ec2.terminate_instances(InstanceIds=[iid])
                else:
                    self.ec2.stop_instances(InstanceIds=[iid])
            except Exception as error:  # a failed report must not kill the data plane
                log.exception("data plane: reporting %s's shutdown failed", iid)
                self.errors[iid] = f"instance-initiated shutdown: {error}"

        threading.Thread(target=watch, name=f"dataplane-power-{iid}", daemon=True).start()

    def boot_running(self) -> None:
        """Boot every instance that was already running before the data plane subscribed."""
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["running"]}]
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    self.handle({"instance_id": instance["InstanceId"], "state": "running"})

    def _terminate(self, host: IsolatedHost) -> None:
        """Terminate, keeping the console output (EC2 keeps it for a while after termination too) and,
        for debugging, the instance's journal, in ``console_dir``."""
        host.stop()
        if self.console_dir is not None:
            self.console_dir.mkdir(parents=True, exist_ok=True)
            (self.console_dir / f"{host.name}.log").write_text(host.console_output)
            # What its units logged (the hub's and the server's own logs) is in its journal only.
            (self.console_dir / f"{host.name}.journal").write_text(host.journal())
        host.terminate()

    def close(self) -> None:
        """Terminate every host (the sandbox is going away)."""
        with self._lock:
            self._closed = True
        for iid, host in list(self.hosts.items()):
            try:
                self._terminate(host)
            except Exception:
                log.exception("data plane: cleaning up %s", iid)
        self.hosts.clear()
