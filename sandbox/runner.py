"""`make local`: the whole platform on one machine, against the AWS emulator.

Start-up, in order (each step prints one status line):
1. preflight: root, `ip netns`, overlayfs; then remove what a crashed run left behind;
2. the AWS emulator (moto + :mod:`sandbox.emulator`) on 127.0.0.1;
3. `cdk synth` with the real CLI, and the stack deployed into the emulator's CloudFormation
   (:mod:`sandbox.deploy`): the very launch templates, user data and settings `cdk deploy` makes;
   what the emulator could not create is listed by name;
4. the hub database: the emulator's RDS records the stack's DB instance but runs nothing, so a
   real PostgreSQL server (:mod:`sandbox.postgres`) plays it, reached in the VPC at the name the
   stack's RDS endpoint gives (the VPC's DNS answers it with an address in the DB's subnet), with
   the credentials, cookie secret and proxy token put in the emulator's Secrets Manager under the
   names the stack gives them (its CloudFormation cannot create secrets);
   the VPC: a bridge in a namespace of the sandbox's own, with the subnets' gateway addresses and
   the emulator reachable inside it as a VPC endpoint (a relay), and its DNS following the
   stack's Route 53 private zone (:mod:`sandbox.route53`: the hub API's stable name);
5. the data plane (:mod:`sandbox.dataplane`): the instance the stack's hub Auto Scaling group
   launched boots from its real user data (and, once its hub answers, signals CloudFormation, which
   the sandbox waits for: moto does not), and so will every notebook instance the spawner launches;
6. a relay from 127.0.0.1:8000 to the hub's proxy (the load balancer's job in AWS), the demo
   accounts, an admin API token, and `.sandbox/env.json`;
7. a hub host keeper (:class:`HubHostKeeper`), the hub Auto Scaling group's health check: when
   the group's instance is terminated, it has the group (moto's) launch a replacement from its
   launch template and points the relay at it once its hub answers.
With ``--two-accounts`` also a target account B (docs/DEPLOY.md, "Adding a target account"): after
step 3 the target stack deployed into B and the hub stack updated with its outputs
(:meth:`Sandbox.deploy_target_account`); with step 5, B's VPC, peered with the hub's, and B's data
plane (:class:`TargetAccount`).
Ctrl-C or SIGTERM tears everything down: hosts, namespaces, mounts, relays, the emulator.
"""

from __future__ import annotations

import http.cookiejar
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .route53 import PrivateZoneFollower

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = REPO / ".sandbox"
ENV_FILE = STATE_DIR / "env.json"
PID_FILE = STATE_DIR / "sandbox.pid"
HOSTS_ROOT = Path("/var/tmp/ec2hub-hosts")
VPC_NAME = "ec2hub-vpc"
ENDPOINT_PORT = 4566
ACCOUNT = "111111111111"  # the CDK app's default account, so the template and emulator agree
REGION = "us-east-1"
# The sandbox deploys the repository's ec2hub.yaml as it is, with only what the emulator needs
# instead: its account and region, and plain HTTP (it has no ACM, and the hub is on loopback); an
# empty value clears the file's certificate.
SANDBOX_CONTEXT = {"account": ACCOUNT, "region": REGION, "certificate_arn": "", "allow_http": "true"}
DATABASE_NAME = "sandbox"  # the scratch PostgreSQL's name (sandbox.postgres): a crashed run's is found
DEMO_USER = "demo"
ADMIN_SCOPES = ["admin:users", "admin:servers", "access:servers", "read:users", "list:users", "read:servers"]

log = logging.getLogger("sandbox")


class SandboxError(RuntimeError):
    """A start-up step failed; the message says what and what to do."""


def say(message: str) -> None:
    print(f"sandbox: {message}", flush=True)


def preflight() -> None:
    """Fail fast, with one message, where the sandbox cannot run."""
    if sys.platform != "linux":
        raise SandboxError("the sandbox needs Linux (network, mount and PID namespaces)")
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (it creates network namespaces and overlay mounts): run it as root")
    for tool in ("ip", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            raise SandboxError(f"'{tool}' is missing: install iproute2 and util-linux (make deps does)")
    probe = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "true"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise SandboxError(f"this machine does not allow namespaces ({probe.stderr.strip()}): run on a VM or as privileged")
    overlay = Path("/proc/filesystems").read_text()
    if "overlay" not in overlay:
        raise SandboxError("the kernel has no overlayfs (modprobe overlay)")


def cleanup_leftovers() -> None:
    """Remove what a crashed run left: processes, mounts, namespaces and host disks."""
    from . import host, netns, postgres

    host.cleanup_leftovers(HOSTS_ROOT)
    netns.cleanup_leftovers()
    postgres.cleanup_leftovers(DATABASE_NAME)


@dataclass
class Sandbox:
    pending_s: float = 2.0
    port: int = 8000
    emulator: object = None
    session: object = None
    deployment: object = None
    vpc: object = None
    dataplane: object = None
    relays: list = field(default_factory=list)
    hub_host: object = None
    hub_ip: str = ""
    admin_password: str = ""
    database: object = None
    hub_keeper: object = None
    zone_follower: object = None
    env: dict = field(default_factory=dict)
    two_accounts: bool = False  # also target account B (docs/DEPLOY.md, "Adding a target account")
    deploy_context: dict = field(default_factory=dict)  # what the hub stack was deployed with besides SANDBOX_CONTEXT
    target: object = None  # TargetAccount, with two_accounts

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> dict:
        # Accounts by credentials (sandbox.emulator): the sandbox's own key and the instances'
        # IMDS keys are the hub's account, a role assumed in a target's is that account's.
        os.environ.pop("MOTO_ACCOUNT_ID", None)
        from . import images, netns
        from .dataplane import DataPlane, subnet_gateways
        from .deploy import deploy_assembly
        from .emulator import start_emulator

        preflight()
        cleanup_leftovers()
        STATE_DIR.mkdir(exist_ok=True)
        ENV_FILE.unlink(missing_ok=True)
        shutil.rmtree(STATE_DIR / "console", ignore_errors=True)
        shutil.rmtree(STATE_DIR / "efs", ignore_errors=True)

        self.emulator = start_emulator(0, pending_s=self.pending_s, default_account=ACCOUNT)
        say(f"AWS emulator at {self.emulator.endpoint_url} (instances stay pending {self.pending_s:g} s)")
        import boto3

        self.session = boto3.Session(
            aws_access_key_id="sandbox", aws_secret_access_key="sandbox", region_name=REGION
        )
        ec2 = self.client("ec2")

        assembly = self.synth()
        self.deployment = deploy_assembly(self.client, assembly, account=ACCOUNT, region=REGION)
        say(f"stack {self.deployment.stack_name} deployed into the emulator: {len(self.deployment.resources)} resources")
        if self.two_accounts:
            self.deploy_target_account()
        for logical, kind in self.deployment.not_created:
            say(f"  not created by the emulator: {logical} ({kind})")
        for name in self.deployment.stood_in_parameters:
            say(f"  public parameter stood in with the sandbox image: {name}")
        self.admin_password = self.create_admin_secret()
        endpoint_name, database_port, database_address = self.start_database()

        vpc_ids = self.deployment.physical_ids("AWS::EC2::VPC")
        if len(vpc_ids) != 1:
            raise SandboxError(f"expected one VPC in the stack, found {vpc_ids}")
        self.vpc = netns.Vpc(VPC_NAME, gateways=subnet_gateways(ec2, vpc_ids[0]),
                             host_records={endpoint_name: database_address}).create()
        self.relays.append(netns.Relay(
            listen=(database_address, database_port), listen_netns=self.vpc.netns,
            connect=("127.0.0.1", self.database.port), name="database",
        ).start())
        say(f"hub database: PostgreSQL at {endpoint_name}:{database_port} ({database_address} in the VPC)")
        endpoint = netns.Relay(
            listen=("0.0.0.0", ENDPOINT_PORT), listen_netns=self.vpc.netns,
            connect=("127.0.0.1", self.emulator.port), name="aws-endpoint",
        ).start()
        self.relays.append(endpoint)
        say(f"VPC bridge up in namespace {self.vpc.netns} ({len(self.vpc.gateways)} subnets); AWS endpoint on port {ENDPOINT_PORT}")
        zones = self.deployment.physical_ids("AWS::Route53::HostedZone")
        self.zone_follower = PrivateZoneFollower(self.client("route53"), self.vpc, zones).start()
        say(f"VPC DNS follows the stack's Route 53 hosted zone{'s' if len(zones) != 1 else ''} {', '.join(zones) or '(none)'}")

        self.dataplane = DataPlane(
            ec2=ec2, efs=self.client("efs"), vpc=self.vpc, region=REGION, endpoint_port=ENDPOINT_PORT,
            efs_root=STATE_DIR / "efs", state_root=HOSTS_ROOT,
            console_dir=STATE_DIR / "console",
            # The admin token and every host's console: the sandbox's, no instance's to read.
            hidden_paths=(STATE_DIR,),
            account=ACCOUNT,
        )
        self.emulator.add_listener(self.dataplane.handle)
        if self.target is not None:
            self.target.connect(self, zones)
        self.dataplane.boot_running()
        images.build_stack_images(self)  # the baked classes' images, while the hub boots (none: no-op)
        self.hub_host, self.hub_ip = self.wait_for_hub_host()
        say(f"hub instance {self.hub_host.name} of group {self.hub_group} booting at {self.hub_ip} from its user data")

        forward = netns.Relay(
            listen=("127.0.0.1", self.port), connect=(self.hub_ip, 8000),
            connect_netns=self.hub_host.netns, name="hub-forward",
        ).start()
        self.relays.append(forward)
        hub_url = f"http://127.0.0.1:{forward.port}"
        self.wait_for_hub(hub_url)
        self.wait_for_signal(self.hub_host.name)
        say(f"hub answers at {hub_url}; its host signalled the group's creation to CloudFormation")
        self.hub_keeper = HubHostKeeper(self, forward)

        accounts = create_demo_accounts(hub_url, self.admin_password)
        token = admin_token(hub_url, admin_user(), accounts[admin_user()])
        env = {
            "hub_url": hub_url,
            "api_token": token,
            "aws_endpoint_url": self.emulator.endpoint_url,
            "region": REGION,
            "hub_instance_id": self.hub_host.name,
            "stack_name": self.deployment.stack_name,
            "users": accounts,
            "pid": os.getpid(),
            "deploy_context": self.deploy_context,
        }
        if self.target is not None:
            env["target"] = self.target.env()
        self.env = env
        self.write_env()
        self.hub_keeper.start()
        return env

    def deploy_target_account(self) -> None:
        """docs/DEPLOY.md's "Adding a target account", steps 2, 3 and 5, before the hub host boots:
        the target stack deployed into account B with the hub stack's HubRoleArn and HubVpcCidr,
        then the hub stack updated with the target's outputs (the catalog's class on it, the
        target's subnets and template in the settings, AssumeRole on its role). Step 4 (the
        peering, routes and zone association) is :meth:`TargetAccount.connect`."""
        from .deploy import deploy_assembly

        started = time.monotonic()
        catalog = two_account_catalog(STATE_DIR / "catalog-two-accounts.yaml")
        deployment, outputs = deploy_target(
            self.emulator.endpoint_url, STATE_DIR / "cdk.out.target", catalog=catalog,
            hub_role_arn=self.deployment.outputs["HubRoleArn"], hub_cidr=self.deployment.outputs["HubVpcCidr"])
        say(f"target stack {deployment.stack_name} deployed into account {TARGET_ACCOUNT} ({TARGET_REGION}): "
            f"{len(deployment.resources)} resources")
        for logical, kind in deployment.not_created:
            say(f"  not created by the emulator: {logical} ({kind})")
        outputs_file = STATE_DIR / "targets.json"
        outputs_file.write_text(json.dumps(outputs, indent=2))
        self.deploy_context = {"catalog": str(catalog), "target_outputs": str(outputs_file)}
        before = self.hub_template_version()
        assembly = synth(STATE_DIR / "cdk.out", self.deploy_context)
        self.deployment = deploy_assembly(self.client, assembly, account=ACCOUNT, region=REGION, update=True)
        if self.hub_template_version() != before:
            # The group's instance was launched from the first version (moto launches at creation).
            raise SandboxError("the target's outputs changed the hub's launch template: its instance is stale")
        self.target = TargetAccount(deployment, hub_cidr=self.deployment.outputs["HubVpcCidr"])
        say(f"stack {self.deployment.stack_name} updated with the target's outputs "
            f"({time.monotonic() - started:.1f} s for both): class {TARGET_CLASS!r} launches in account {TARGET_ACCOUNT}")

    def hub_template_version(self) -> int:
        """The newest version of the hub group's launch template."""
        [group] = self.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.hub_group])["AutoScalingGroups"]
        [template] = self.client("ec2").describe_launch_templates(
            LaunchTemplateIds=[group["LaunchTemplate"]["LaunchTemplateId"]])["LaunchTemplates"]
        return template["LatestVersionNumber"]

    def write_env(self) -> None:
        """env.json, root only, replaced whole: the keeper rewrites it while `python -m sandbox
        deploy`, the tests and the benchmarks read it (a truncate-then-write showed them an empty file)."""
        fd, partial = tempfile.mkstemp(dir=ENV_FILE.parent, prefix=".env.json.")  # 0600
        with os.fdopen(fd, "w") as out:
            json.dump(self.env, out, indent=2)
        os.replace(partial, ENV_FILE)

    def start_database(self) -> tuple[str, int, str]:
        """The stack's RDS instance, played by a real PostgreSQL server; its secrets, made here.

        Returns the endpoint name the emulator's RDS gives, its port, and the VPC address that name
        resolves to (the router address of the DB subnet group's first subnet, where the relay
        listens). The database, user and password are the instance's DBName, MasterUsername and a
        new password, written into the secret as RDS's attachment completes it on AWS.
        """
        from .postgres import PostgresServer

        ids = self.deployment.physical_ids("AWS::RDS::DBInstance")
        if len(ids) != 1:
            raise SandboxError(f"expected one RDS instance in the stack, found {ids}")
        db = self.client("rds").describe_db_instances(DBInstanceIdentifier=ids[0])["DBInstances"][0]
        name, port = db["Endpoint"]["Address"], int(db["Endpoint"]["Port"])
        subnet_id = db["DBSubnetGroup"]["Subnets"][0]["SubnetIdentifier"]
        cidr = self.client("ec2").describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["CidrBlock"]
        address = str(ipaddress.ip_network(cidr).network_address + 1)
        names = {key: self.deployment.outputs.get(key) for key in
                 ("DatabaseSecretName", "CookieSecretName", "ProxyTokenSecretName")}
        if not all(names.values()):
            raise SandboxError(f"the stack lacks outputs {sorted(k for k, v in names.items() if not v)}: "
                               "the hub would have no database")
        try:
            self.database = PostgresServer(name=DATABASE_NAME).start()
        except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
            raise SandboxError(f"the hub database (PostgreSQL) did not start: {error}") from error
        password = secrets.token_hex(16)
        self.database.create_database(db["DBName"], db["MasterUsername"], password)
        credentials = {"engine": "postgres", "username": db["MasterUsername"], "password": password,
                       "host": name, "port": port, "dbname": db["DBName"], "dbInstanceIdentifier": ids[0]}
        sm = self.client("secretsmanager")
        for key, value in (("DatabaseSecretName", json.dumps(credentials)),
                           ("CookieSecretName", secrets.token_hex(32)), ("ProxyTokenSecretName", secrets.token_hex(32))):
            sm.create_secret(Name=names[key], SecretString=value)
        say(f"hub database secrets {', '.join(names.values())} made in the emulator (the stack's own cannot be)")
        return name, port, address

    def create_admin_secret(self) -> str:
        """The stack's generated admin password, made here: moto's CloudFormation cannot create
        an AWS::SecretsManager::Secret (the template's GenerateSecretString). The hub reads it at
        every start, as in AWS, and creates the admin account from it."""
        name = self.deployment.outputs.get("AdminPasswordSecretName")
        if not name:
            raise SandboxError("the stack has no AdminPasswordSecretName output: the hub would have no admin")
        password = secrets.token_urlsafe(24)
        self.client("secretsmanager").create_secret(Name=name, SecretString=password)
        say(f"admin password secret {name} made in the emulator (the stack's own cannot be)")
        return password

    def client(self, name: str):
        return self.session.client(name, region_name=REGION, endpoint_url=self.emulator.endpoint_url)

    def synth(self) -> Path:
        return synth(STATE_DIR / "cdk.out")

    @property
    def hub_group(self) -> str:
        """The name of the stack's hub Auto Scaling group (moto's CloudFormation creates it)."""
        groups = self.deployment.physical_ids("AWS::AutoScaling::AutoScalingGroup")
        if len(groups) != 1:
            raise SandboxError(f"expected one Auto Scaling group (the hub's) in the stack, found {groups}")
        return groups[0]

    def group_instances(self) -> list[str]:
        """The hub group's instances, as the group lists them."""
        [group] = self.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.hub_group])["AutoScalingGroups"]
        return [i["InstanceId"] for i in group["Instances"]]

    def wait_for_hub_host(self, timeout: float = 60, *, besides: tuple[str, ...] = ()):
        """The hub group's instance (other than ``besides``), once the data plane has booted it."""
        ec2 = self.client("ec2")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for instance_id in self.group_instances():
                host = self.dataplane.hosts.get(instance_id)
                if instance_id not in besides and host is not None and host.running:
                    [instance] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
                    return host, instance["PrivateIpAddress"]
            time.sleep(0.2)
        raise SandboxError(f"the hub group's instance did not boot within {timeout:.0f} s: {self.dataplane.errors}")

    def wait_for_signal(self, instance_id: str, timeout: float = 300) -> dict:
        """The group's creation policy, which moto's CloudFormation does not honour: wait for the
        hub host's SignalResource (its first boot sends it once its hub answers, as on AWS)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sent in list(self.emulator.signals):
                if sent["unique_id"] == instance_id:
                    if sent["status"] != "SUCCESS":
                        raise SandboxError(f"hub host {instance_id} signalled {sent['status']} to CloudFormation")
                    return sent
            time.sleep(0.2)
        raise SandboxError(f"hub host {instance_id} sent CloudFormation no signal within {timeout:.0f} s")

    def wait_for_hub(self, hub_url: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{hub_url}/hub/api/", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last = str(error)
            if self.hub_host is not None and not self.hub_host.running:
                break
            time.sleep(0.5)
        console = self.hub_host.console_output[-4000:] if self.hub_host else ""
        raise SandboxError(f"the hub did not answer at {hub_url} within {timeout:.0f} s ({last}); console:\n{console}")

    # -- stop -------------------------------------------------------------------------------------

    def stop(self) -> None:
        if self.hub_keeper is not None:
            self.hub_keeper.stop()
        # The hosts first, while their relays (the database's among them) still carry: a hub that
        # loses its database hangs in its shutdown until the host's grace kills it.
        if self.dataplane is not None:
            self.dataplane.close()
        if self.target is not None:
            self.target.close()
        for relay in reversed(self.relays):
            relay.stop()
        self.relays.clear()
        if self.zone_follower is not None:
            self.zone_follower.stop()
        if self.vpc is not None:
            self.vpc.destroy()
        if self.emulator is not None:
            self.emulator.stop()
        if self.database is not None:
            self.database.stop()
        ENV_FILE.unlink(missing_ok=True)
        cleanup_leftovers()


class TargetAccount:
    """Account B's data plane: its VPC (a namespace of its own, on the target stack's range), the
    peering with the hub's VPC, its DNS and AWS endpoint, and the data plane that boots B's instances.

    The peering is docs/ARCHITECTURE.md §19's decision, reproduced as :class:`sandbox.netns.Peering`:
    routed between the two ranges, the hub API's port open to B's range in A (the hub stack's
    security-group rule, given the target's outputs), the notebook port open to A's range in B
    (the target stack's rule). B's DNS answers the hub's private zone (the zone associated with B's
    VPC): the same ``hub.<zone>`` name, the hub host's private address in A.
    """

    def __init__(self, deployment, *, hub_cidr: str) -> None:
        self.deployment = deployment
        self.hub_cidr = hub_cidr
        self.session = None
        self.vpc = None
        self.peering = None
        self.relays: list = []
        self.zone_follower = None
        self.dataplane = None

    def client(self, sandbox: Sandbox, name: str):
        return self.session.client(name, endpoint_url=sandbox.emulator.endpoint_url)

    def connect(self, sandbox: Sandbox, zones: list[str]) -> None:
        from . import netns
        from .dataplane import DataPlane, role_credentials, subnet_gateways

        if shutil.which("nft") is None:
            raise SandboxError("nft is missing (the peering's security-group ports): install nftables "
                               "(scripts/install-system-deps.sh does)")
        self.session = account_session(sandbox.emulator.endpoint_url, TARGET_ACCOUNT, TARGET_REGION)
        ec2 = self.client(sandbox, "ec2")
        [vpc_id] = self.deployment.physical_ids("AWS::EC2::VPC")
        self.vpc = netns.Vpc(TARGET_VPC_NAME, gateways=subnet_gateways(ec2, vpc_id)).create()
        # The ports the two security groups open, as the deployed settings name them.
        settings = json.loads(sandbox.client("ssm").get_parameter(
            Name=f"/ec2hub/{sandbox.deployment.stack_name}/settings")["Parameter"]["Value"])
        ports = ((settings["hub_api_port"],), (settings["notebook_port"],))
        self.peering = netns.Peering(sandbox.vpc, self.vpc, cidrs=(self.hub_cidr, TARGET_CIDR), ports=ports).create()
        self.relays.append(netns.Relay(
            listen=("0.0.0.0", ENDPOINT_PORT), listen_netns=self.vpc.netns,
            connect=("127.0.0.1", sandbox.emulator.port), name="aws-endpoint-b",
        ).start())
        self.zone_follower = PrivateZoneFollower(sandbox.client("route53"), self.vpc, zones).start()
        self.dataplane = DataPlane(
            ec2=ec2, vpc=self.vpc, region=TARGET_REGION, endpoint_port=ENDPOINT_PORT,
            efs_root=STATE_DIR / "efs", state_root=HOSTS_ROOT, console_dir=STATE_DIR / "console",
            hidden_paths=(STATE_DIR,), account=TARGET_ACCOUNT,
            instance_credentials=role_credentials(self.client(sandbox, "iam"), self.client(sandbox, "sts")),
        )
        sandbox.emulator.add_listener(self.dataplane.handle)
        say(f"account {TARGET_ACCOUNT}: VPC {vpc_id} in namespace {self.vpc.netns} ({TARGET_CIDR}, "
            f"{len(self.vpc.gateways)} subnets), peered with the hub's ({self.hub_cidr}: port {ports[0][0]} "
            f"to A, {ports[1][0]} to B), the hub's private zone associated, AWS endpoint on port {ENDPOINT_PORT}")

    def env(self) -> dict:
        return {"account": TARGET_ACCOUNT, "region": TARGET_REGION, "name": TARGET, "class": TARGET_CLASS,
                "stack_name": self.deployment.stack_name, "cidr": TARGET_CIDR, "vpc_netns": TARGET_VPC_NAME,
                "admin_role_arn": f"arn:aws:iam::{TARGET_ACCOUNT}:role/{TARGET_ADMIN_ROLE}"}

    def close(self) -> None:
        if self.dataplane is not None:
            self.dataplane.close()
        for relay in self.relays:
            relay.stop()
        if self.zone_follower is not None:
            self.zone_follower.stop()
        if self.peering is not None:
            self.peering.destroy()
        if self.vpc is not None:
            self.vpc.destroy()


class HubHostKeeper:
    """Plays the hub Auto Scaling group's health check, which moto's group does not have.

    Every second it asks EC2 for the group's hub instance; once that is terminated (``python -m
    sandbox inject terminate <hub id>``, or anything else) it tells the group, as the group's
    own health check would: DetachInstances of the ended instance, keeping the desired capacity,
    after which moto's group launches a replacement from its launch template (image, type,
    subnet, security groups, tags, user data; the emulator adds the template's profile and
    metadata options) and registers it in the target group. The keeper waits for the data plane
    to boot it and for its signal (its hub answers), then points the load balancer's stand-in
    (the relay to the proxy) at it. The new host's every-start step fetches the same database and
    secrets, so it finds every user, server and session.
    """

    def __init__(self, sandbox: Sandbox, forward) -> None:
        self.sandbox, self.forward = sandbox, forward
        self.ec2 = sandbox.client("ec2")
        self.autoscaling = sandbox.client("autoscaling")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-host-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            current = self.sandbox.env.get("hub_instance_id")
            try:
                reservations = self.ec2.describe_instances(InstanceIds=[current])["Reservations"]
                states = [i["State"]["Name"] for r in reservations for i in r["Instances"]]
            except Exception as error:  # noqa: BLE001 (an injected outage: ask again next second)
                log.debug("hub host keeper: describe %s failed: %s", current, error)
                continue
            if states and states[0] not in ("shutting-down", "terminated"):
                continue
            try:
                self.replace(current)
            except Exception as error:  # noqa: BLE001 (keep trying, as a group would)
                say(f"hub host keeper: replacing {current} failed: {error}")

    def replace(self, gone: str) -> None:
        started = time.monotonic()
        sandbox = self.sandbox
        if gone in sandbox.group_instances():
            self.autoscaling.detach_instances(InstanceIds=[gone], AutoScalingGroupName=sandbox.hub_group,
                                              ShouldDecrementDesiredCapacity=False)
        host, ip = sandbox.wait_for_hub_host(120, besides=(gone,))
        say(f"hub host {gone} is gone: the group's instance {host.name} takes its place")
        sandbox.wait_for_signal(host.name)
        self.repoint(host, ip)
        say(f"hub host {host.name} at {ip} answers {time.monotonic() - started:.1f} s after; the load balancer points at it")

    def repoint(self, host, ip: str) -> None:
        """The load balancer's target group now routes to ``host`` (the group registered it)."""
        sandbox = self.sandbox
        self.forward.connect_addr, self.forward.connect_netns = (ip, 8000), host.netns
        sandbox.hub_host, sandbox.hub_ip = host, ip
        sandbox.env["hub_instance_id"] = host.name
        sandbox.write_env()


def synth(out: Path, context: dict[str, str] | None = None, *, cdk_context: dict | None = None,
          source: Path = REPO) -> Path:
    """The real CDK CLI, offline, with the sandbox's context (and ``context``, e.g. another
    catalog) into ``out``. ``cdk_context``: context the command line cannot carry (keys with
    ``=`` in them, lists, such as another account's availability zones), given as the CLI reads
    cdk.json: from a cdk.json beside ``out`` that is the app's with it added. ``source``: the app
    of another checkout of the repository (its infra/, bootstrap/, spawner/ and files), with this
    repository's CLI and virtualenv."""
    env = {**os.environ, "CDK_DISABLE_VERSION_CHECK": "1", "CDK_DISABLE_CLI_TELEMETRY": "true"}
    for key in list(env):
        if key.startswith("AWS_"):
            env.pop(key)
    env["PATH"] = f"{REPO / 'node_modules' / '.bin'}:{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    env.setdefault("JSII_RUNTIME_PACKAGE_CACHE_ROOT", str(REPO / ".cache" / "jsii"))
    env.setdefault("CDK_HOME", str(REPO / ".cache" / "cdk"))
    cdk = REPO / "node_modules" / ".bin" / "cdk"
    cmd = [str(cdk), "synth", "--quiet", "-o", str(out.resolve())]
    for key, value in {**SANDBOX_CONTEXT, **(context or {})}.items():
        cmd += ["-c", f"{key}={value}"]
    cwd = source
    if cdk_context:
        cwd = out.parent / f"{out.name}.app"
        cwd.mkdir(parents=True, exist_ok=True)
        app = json.loads((source / "cdk.json").read_text())
        app["app"] = f"{REPO / '.venv' / 'bin' / 'python'} {source / 'app.py'}"
        app["context"] = {**app.get("context", {}), **cdk_context}
        (cwd / "cdk.json").write_text(json.dumps(app, indent=1))
    elif source != REPO:  # cdk.json runs .venv/bin/python app.py from the app's directory
        cmd += ["--app", f"{REPO / '.venv' / 'bin' / 'python'} app.py"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SandboxError(f"cdk synth failed: {proc.stderr.strip()[-2000:]}")
    say(f"cdk synth{'' if source == REPO else f' of {source}'}: template written to "
        f"{out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return out


# -- a second account: a catalog target -------------------------------------------------------------

# The sandbox's target: account B in another region, reached through the role its target stack
# makes (docs/DEPLOY.md, "Adding a target account"). The external id is no secret (it guards
# against a confused deputy, docs/ARCHITECTURE.md §19); the catalog carries it.
TARGET = "research"
TARGET_ACCOUNT = "222222222222"
TARGET_REGION = "eu-central-1"
TARGET_CIDR = "10.1.0.0/16"  # the target stack's default, not the hub VPC's 10.0.0.0/16
TARGET_CLASS = "research"
TARGET_EXTERNAL_ID = "ec2hub-sandbox-research"
TARGET_ADMIN_ROLE = "ec2hub-sandbox-deployer"  # whose credentials `cdk deploy` into B uses
TARGET_VPC_NAME = VPC_NAME + "b"  # B's VPC namespace (its hosts' start with it, as A's do with VPC_NAME)


def two_account_catalog(path: Path, *, source: Path = REPO / "instance-classes.yaml") -> Path:
    """The repository's catalog plus the target ``research`` (account B) and a class on it, a copy
    of the default class for the group ``research``, written to ``path``. Test-only: the shipped
    catalog stays one account."""
    import yaml

    catalog = yaml.safe_load(source.read_text())
    default = next((c for c in catalog["classes"] if c.get("default")), catalog["classes"][0])
    catalog["targets"] = {TARGET: {
        "account": TARGET_ACCOUNT, "region": TARGET_REGION, "external_id": TARGET_EXTERNAL_ID,
        "role_arn": f"arn:aws:iam::{TARGET_ACCOUNT}:role/ec2hub-{TARGET}",
    }}
    catalog["classes"].append({
        **{k: v for k, v in default.items() if k != "default"},
        "slug": TARGET_CLASS, "display_name": f"{default['display_name']} (account {TARGET_ACCOUNT})",
        "description": f"The default class, launched in account {TARGET_ACCOUNT} ({TARGET_REGION}).",
        "target": TARGET, "allowed_groups": [TARGET],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


def account_session(endpoint_url: str, account: str, region: str):
    """A boto3 session acting in ``account``: an administrator's role there, assumed (the emulator
    tells accounts by credentials, and files an assumed role's key under the role's account)."""
    import boto3

    sts = boto3.client("sts", region_name=region, endpoint_url=endpoint_url,
                       aws_access_key_id="sandbox", aws_secret_access_key="sandbox")
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/{TARGET_ADMIN_ROLE}",
                            RoleSessionName="cdk-deploy")["Credentials"]
    return boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"], region_name=region)


def deploy_target(endpoint_url: str, out: Path, *, catalog: Path, hub_role_arn: str, hub_cidr: str):
    """``cdk deploy -c target=research -c hub_role_arn=... -c hub_cidr=... --outputs-file`` into
    account B: the real CLI's synth of the target stack, deployed with B's credentials into B's
    CloudFormation. Returns the deployment and the outputs file's content (stack -> outputs),
    which the hub stack reads (``-c target_outputs=<file>``)."""
    from .deploy import deploy_assembly

    assembly = synth(out, {"catalog": str(catalog), "target": TARGET, "hub_role_arn": hub_role_arn,
                           "hub_cidr": hub_cidr, "target_cidr": TARGET_CIDR},
                     # What `cdk deploy` would look up with B's credentials.
                     cdk_context={f"availability-zones:account={TARGET_ACCOUNT}:region={TARGET_REGION}":
                                  [f"{TARGET_REGION}a", f"{TARGET_REGION}b"]})
    session = account_session(endpoint_url, TARGET_ACCOUNT, TARGET_REGION)
    deployment = deploy_assembly(lambda name: session.client(name, endpoint_url=endpoint_url), assembly,
                                 account=TARGET_ACCOUNT, region=TARGET_REGION)
    return deployment, {deployment.stack_name: deployment.outputs}


# -- python -m sandbox deploy ----------------------------------------------------------------------


def redeploy(context: dict[str, str] | None = None, *, source: Path = REPO, pause_before_cleanup: bool = False,
             timeout: float = 600) -> int:
    """``cdk deploy`` of the current tree (or the tree at ``source``) into the running sandbox:
    synth, then UpdateStack in the emulator's CloudFormation; then what moto's CloudFormation
    leaves out of the update, done here: a hub launch template with a new version is the group's
    replacing update (:func:`replace_hub_host`; ``pause_before_cleanup``: with both hub hosts
    alive, wait for a line on stdin before the old one goes). Run beside ``python -m sandbox up``,
    as root."""
    if not ENV_FILE.exists():
        say("not running (no .sandbox/env.json)")
        return 1
    import boto3

    from .deploy import deploy_assembly
    from .emulator import EmulatorClient

    env = json.loads(ENV_FILE.read_text())
    session = boto3.Session(aws_access_key_id="sandbox", aws_secret_access_key="sandbox", region_name=REGION)

    def client(name: str):
        return session.client(name, region_name=REGION, endpoint_url=env["aws_endpoint_url"])

    started = time.monotonic()
    try:
        # What the sandbox deployed the stack with (a two-account sandbox's catalog and target
        # outputs), under what this deploy is given.
        assembly = synth(STATE_DIR / "cdk.out.deploy", {**env.get("deploy_context", {}), **(context or {})},
                         source=source)
        deployment = deploy_assembly(client, assembly, account=ACCOUNT, region=REGION, update=True)
    except (SandboxError, RuntimeError, TimeoutError) as error:
        say(f"error: {error}")
        return 1
    say(f"stack {deployment.stack_name} updated in the emulator in {time.monotonic() - started:.1f} s")
    autoscaling = client("autoscaling")
    [group_name] = deployment.physical_ids("AWS::AutoScaling::AutoScalingGroup")
    [group] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])["AutoScalingGroups"]
    template_id = group["LaunchTemplate"]["LaunchTemplateId"]
    [template] = client("ec2").describe_launch_templates(LaunchTemplateIds=[template_id])["LaunchTemplates"]
    latest, running = template["LatestVersionNumber"], int(group["LaunchTemplate"]["Version"])
    if latest == running:
        say(f"hub launch template {template_id} unchanged (version {running}): the hub host stays "
            f"{env['hub_instance_id']}; changed settings reach its hub through its settings watcher")
        return 0
    say(f"hub launch template {template_id}: version {latest} (the hub runs {running}): replacing the hub host")
    try:
        new = replace_hub_host(client, EmulatorClient(env["aws_endpoint_url"]), group_name, template_id, latest,
                               env["hub_instance_id"], timeout=timeout,
                               before_cleanup=_wait_for_stdin if pause_before_cleanup else None)
    except SandboxError as error:
        say(f"error: {error}")
        return 1
    say(f"hub host replaced by {new} {time.monotonic() - started:.1f} s after the deploy began")
    return 0


def _wait_for_stdin(new: str, old: str) -> None:
    say(f"paused before the cleanup: hub hosts {old} (old) and {new} (new) are both alive; "
        "a line on stdin (or its end) goes on")
    sys.stdin.readline()


def replace_hub_host(client, emulator, group: str, template_id: str, version: int, old: str, *,
                     timeout: float = 600, before_cleanup=None) -> str:
    """The hub group's replacing update (``AutoScalingReplacingUpdate``), which moto's CloudFormation
    does not carry out (it compares the group's properties as written, and ``LatestVersionNumber``
    is the same ``Fn::GetAtt`` whatever the version): a host from template ``version`` boots beside
    the old one, and once it has signalled (its hub answers), the old one is terminated, as
    CloudFormation deletes the old group in the update's cleanup. The sandbox's group is one group
    whose size goes to 2 and back (moto's group launches the template's default version, so that
    becomes ``version``), where AWS makes a new group. The load balancer's stand-in follows
    (:class:`HubHostKeeper`: the old target is gone, the new one answers). ``before_cleanup(new,
    old)``, if given, runs between the signal and the old host's termination (a slow cleanup: two
    hub hosts alive, the new one standing by while the old hub holds the lease). Returns the new
    host."""
    autoscaling, ec2 = client("autoscaling"), client("ec2")
    ec2.modify_launch_template(LaunchTemplateId=template_id, DefaultVersion=str(version))
    autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=group, LaunchTemplate={"LaunchTemplateId": template_id, "Version": str(version)},
        MaxSize=2, DesiredCapacity=2)
    deadline = time.monotonic() + timeout

    def until(what: str, check):
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.5)
        raise SandboxError(f"hub replacement: {what} within {timeout:.0f} s")

    def new_instance():
        [described] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
        return next((i["InstanceId"] for i in described["Instances"] if i["InstanceId"] != old), None)

    new = until("no new hub host was launched", new_instance)
    say(f"hub host {new} launched from version {version} beside {old}")
    signal = until(f"{new} sent no signal", lambda: next(
        (s for s in emulator.signals() if s["unique_id"] == new), None))
    if signal["status"] != "SUCCESS":
        # CloudFormation's rollback: the new group goes, the old one never stopped.
        autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=new, ShouldDecrementDesiredCapacity=True)
        autoscaling.update_auto_scaling_group(AutoScalingGroupName=group, MaxSize=1, DesiredCapacity=1)
        raise SandboxError(f"hub host {new} signalled {signal['status']}: rolled back to {old}")
    say(f"hub host {new} signalled SUCCESS (its hub answers)")
    if before_cleanup is not None:
        before_cleanup(new, old)
    say(f"terminating {old}, as the update's cleanup does")
    autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=old, ShouldDecrementDesiredCapacity=True)
    autoscaling.update_auto_scaling_group(AutoScalingGroupName=group, MinSize=1, MaxSize=1, DesiredCapacity=1)
    until("the load balancer's stand-in did not move to the new hub",
          lambda: json.loads(ENV_FILE.read_text()).get("hub_instance_id") == new)
    return new


# -- demo accounts ------------------------------------------------------------------------------


class _Browser:
    """A cookie-keeping HTTP client that speaks JupyterHub's XSRF protection (loopback only)."""

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def xsrf(self) -> str:
        for cookie in self.jar:
            if cookie.name == "_xsrf":
                return cookie.value
        return ""

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read().decode()

    def post_form(self, path: str, data: dict) -> tuple[int, str]:
        body = urllib.parse.urlencode({**data, "_xsrf": self.xsrf()}).encode()
        try:
            with self.opener.open(self.base + path, data=body, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def post_json(self, path: str, data: dict) -> dict:
        request = urllib.request.Request(
            self.base + path, data=json.dumps(data).encode(), method="POST",
            headers={"Content-Type": "application/json", "X-XSRFToken": self.xsrf()},
        )
        with self.opener.open(request, timeout=30) as response:
            return json.loads(response.read())


def admin_user() -> str:
    """The hub's first admin, as the deployed ec2hub.yaml names it."""
    from infra.config import load_config

    return load_config(SANDBOX_CONTEXT).admin_user


def create_demo_accounts(hub_url: str, admin_password: str) -> dict[str, str]:
    """Sign up a demo user through NativeAuthenticator, as a person would, and have the admin (whose
    account the hub made from the stack's secret) approve it. Returns user name -> password
    (sandbox only)."""
    admin = admin_user()
    accounts = {admin: admin_password, DEMO_USER: secrets.token_urlsafe(12)}
    browser = _Browser(hub_url)
    browser.get("/hub/signup")
    password = accounts[DEMO_USER]
    status, page = browser.post_form("/hub/signup", {
        "username": DEMO_USER, "signup_password": password, "signup_password_confirmation": password,
    })
    # NativeAuthenticator answers 200 either way, with <div class="alert alert-..." role="alert">.
    alert = re.search(r'<div class="alert (alert-\w+)" role="alert">(.*?)</div>', page, re.DOTALL)
    if status != 200 or alert is None or alert.group(1) == "alert-danger":
        reason = re.sub(r"<[^>]+>|\s+", " ", alert.group(2)).strip() if alert else f"HTTP {status}"
        raise SandboxError(f"signing up {DEMO_USER!r} failed: {reason}")
    approver = _Browser(hub_url)
    login(approver, admin, accounts[admin])
    approver.get(f"/hub/authorize/{DEMO_USER}")
    return accounts


def login(browser: _Browser, name: str, password: str) -> None:
    browser.get("/hub/login")
    status, _ = browser.post_form("/hub/login", {"username": name, "password": password})
    if not any(c.name.startswith("jupyterhub-session-id") or c.name == "jupyterhub-hub-login" for c in browser.jar):
        raise SandboxError(f"logging in as {name!r} failed (HTTP {status})")


def admin_token(hub_url: str, name: str, password: str) -> str:
    browser = _Browser(hub_url)
    login(browser, name, password)
    reply = browser.post_json(f"/hub/api/users/{name}/tokens", {"note": "sandbox admin", "scopes": ADMIN_SCOPES})
    return reply["token"]


# -- entry points ----------------------------------------------------------------------------------


def up(pending_s: float, port: int, *, two_accounts: bool = False) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    # moto logs each resource its CloudFormation skips and each Lambda it cannot run in Docker;
    # the sandbox reports those itself, by name, from the deployed stack.
    logging.getLogger("moto").setLevel(logging.CRITICAL)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Tried to parse")
    sandbox = Sandbox(pending_s=pending_s, port=port, two_accounts=two_accounts)
    stop = threading.Event()
    ready = threading.Event()

    def on_signal(signum, frame):
        # While starting, unwind at once (the finally below tears down what was made); once
        # ready, let the main thread leave its wait.
        if not ready.is_set():
            raise SystemExit(128 + signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    try:
        preflight()
    except SandboxError as error:
        say(f"error: {error}")
        return 1
    STATE_DIR.mkdir(exist_ok=True)
    PID_FILE.write_text(str(os.getpid()))
    try:
        env = sandbox.start()
        ready.set()
        say(f"ready: open {env['hub_url']} and log in")
        say(f"  user  {DEMO_USER} / {env['users'][DEMO_USER]}")
        say(f"  admin {admin_user()} / {env['users'][admin_user()]}")
        say(f"  API token and endpoints in {ENV_FILE.relative_to(REPO)}; `python -m sandbox status` lists instances")
        say("Ctrl-C stops the sandbox and removes everything it made")
        stop.wait()
        say("stopping")
        return 0
    except SandboxError as error:
        say(f"error: {error}")
        return 1
    finally:
        sandbox.stop()
        PID_FILE.unlink(missing_ok=True)
        say("stopped; namespaces, mounts and hosts removed")


def down() -> int:
    """Stop a running sandbox (by its pid file) and remove anything a crashed one left."""
    if PID_FILE.exists():
        pid = int(PID_FILE.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                os.kill(pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            pass
    cleanup_leftovers()
    say("down")
    return 0


def status() -> int:
    """Every instance with its state, type, class, address and tags; who owns it in the hub's view
    (the hub's REST API with the admin token: each user's servers, stopped ones too, and the
    ``instance_id`` of their saved state); and what the orphan sweeper would decide about it now
    (:func:`ec2spawner.sweeper.find_orphans`, the sweeper's own decision function, with the
    spawner's default grace and stop mode)."""
    if not ENV_FILE.exists():
        say("not running (no .sandbox/env.json)")
        return 1
    from datetime import UTC, datetime

    import boto3
    from ec2spawner.aws import InstanceView
    from ec2spawner.spawner import EC2Spawner
    from ec2spawner.sweeper import Ownership, find_orphans

    env = json.loads(ENV_FILE.read_text())
    ec2 = boto3.client("ec2", region_name=env["region"], endpoint_url=env["aws_endpoint_url"],
                       aws_access_key_id="sandbox", aws_secret_access_key="sandbox")
    try:
        owners, servers = hub_owners(env["hub_url"], env["api_token"])
    except (urllib.error.URLError, OSError, ValueError) as error:
        owners, servers = None, set()
        say(f"the hub's API does not answer ({error}): owners unknown")
    instances, views = [], {}
    for page in ec2.get_paginator("describe_instances").paginate():
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                instances.append(inst)
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                if tags.get("ec2hub:hub") == env["stack_name"]:
                    views[inst["InstanceId"]] = InstanceView.from_api(inst, reservation.get("OwnerId", ""))
    traits = EC2Spawner.class_traits()
    grace = traits["orphan_grace"].default_value
    decisions = {} if owners is None else {d.instance_id: d for d in find_orphans(
        views, Ownership.of(owners, servers), now=datetime.now(UTC), grace=grace,
        keep_stopped=traits["stop_mode"].default_value == "stop")}
    print(f"hub: {env['hub_url']}  (sweeper as configured by default: grace {grace:.0f} s)")
    print(f"{'instance':21} {'state':13} {'type':10} {'class':8} {'ip':12} {'tags':16} {'owner (hub)':24} sweeper")
    for inst in instances:
        iid = inst["InstanceId"]
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        server = tags.get("ec2hub:server", "")
        role = "(hub host)" if "ec2hub:settings-parameter" in tags else tags.get("ec2hub:user", "") + (f"/{server}" if server else "")
        owner = "?" if owners is None else owners.get(iid, "-")
        decision = decisions.get(iid)
        if iid not in views:
            intent = "not this hub's"
        elif inst["State"]["Name"] in ("shutting-down", "terminated"):
            intent = "ended"
        elif "ec2hub:user" not in tags:
            intent = "never swept: not a notebook instance"
        elif decision is None:
            intent = "?" if owners is None else "keep: owned"
        else:
            intent = f"{'TERMINATE' if decision.terminate else 'keep'}: {decision.reason}"
        print(f"{iid:21} {inst['State']['Name']:13} {inst['InstanceType']:10} {tags.get('ec2hub:class', ''):8} "
              f"{inst.get('PrivateIpAddress', ''):12} {role:16} {owner:24} {intent}")
    return 0


def hub_owners(hub_url: str, token: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """Instance id -> ``user/server (ready|pending <what>|stopped|kept)`` for every instance a
    saved server state names (``instance_id``, or ``kept_instance_id`` in stop mode), and the
    (user, server) pairs the hub's database knows."""
    request = urllib.request.Request(f"{hub_url}/hub/api/users?include_stopped_servers=1",
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        users = json.loads(response.read())
    owners, servers = {}, set()
    for user in users:
        for name, model in (user.get("servers") or {}).items():
            servers.add((user["name"], name))
            state = model.get("state") or {}
            how = "ready" if model.get("ready") else f"pending {model['pending']}" if model.get("pending") else "stopped"
            label = f"{user['name']}{'/' + name if name else ''}"
            if state.get("instance_id"):
                owners[state["instance_id"]] = f"{label} ({how})"
            if state.get("kept_instance_id") and state["kept_instance_id"] != state.get("instance_id"):
                owners[state["kept_instance_id"]] = f"{label} (kept)"
    return owners, servers
