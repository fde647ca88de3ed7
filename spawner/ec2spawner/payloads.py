"""Pure builders for every AWS request payload the spawner sends.

Nothing here calls AWS or reads the clock: each function maps plain values to the dict boto3 takes,
so tests compare the result to a literal (kubespawner's ``objects.make_pod`` habit). The tag keys
and the secret naming are the contract of docs/ARCHITECTURE.md §3 and §4.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping

TAG_HUB = "ec2hub:hub"
TAG_USER = "ec2hub:user"
TAG_SERVER = "ec2hub:server"
TAG_CLASS = "ec2hub:class"
TAG_SECRET_PREFIX = "ec2hub:secret-prefix"
TAG_EFS = "ec2hub:efs"
# The user's EFS access point (the instance mounts its home through it), and on the access point
# the unix user whose home it is (EFS tag values allow only letters, digits, spaces and _.:/=+-@,
# which a JupyterHub name need not keep to; the unix name always does).
TAG_ACCESS_POINT = "ec2hub:efs-access-point"
TAG_UNIX_USER = "ec2hub:unix-user"
TAG_INSTANCE_ARN = "ec2hub:instance-arn"
# EC2 itself tags every instance launched from a template with the version it used
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/create-launch-template.html).
TAG_TEMPLATE_VERSION = "aws:ec2launchtemplate:version"

# Only notebook instances carry ``ec2hub:user``: the hub host is tagged ``ec2hub:hub`` too
# (infra/hub.py, docs/ARCHITECTURE.md §5), and must never be watched as a server or swept.
TAG_NOTEBOOK_MARKER = TAG_USER

# EC2 tag values are at most 256 characters; the Name tag is truncated to 255 by contract.
MAX_TAG_VALUE = 256
MAX_NAME = 255

# States in which an instance still belongs to its server (a stopped one can be started again).
LIVE_STATES = ("pending", "running")
RESUMABLE_STATES = ("stopping", "stopped")
GONE_STATES = ("shutting-down", "terminated")
ALL_STATES = LIVE_STATES + RESUMABLE_STATES + GONE_STATES


def instance_name(hub_id: str, user: str, server: str) -> str:
    """The ``Name`` tag: ``ec2hub-<hub_id>-<user>[-<server>]``, truncated to 255 characters."""
    name = f"ec2hub-{hub_id}-{user}" + (f"-{server}" if server else "")
    return name[:MAX_NAME]


def instance_tags(
    *,
    hub_id: str,
    user: str,
    server: str,
    class_slug: str,
    secret_prefix: str,
    efs_id: str | None,
    access_point_id: str | None = None,
) -> list[dict[str, str]]:
    """Every tag of a notebook instance (docs/ARCHITECTURE.md §3), in a stable order."""
    tags = {
        TAG_HUB: hub_id,
        TAG_USER: user[:MAX_TAG_VALUE],
        TAG_SERVER: server[:MAX_TAG_VALUE],
        TAG_CLASS: class_slug,
        TAG_SECRET_PREFIX: secret_prefix,
    }
    if efs_id:
        tags[TAG_EFS] = efs_id
    if access_point_id:
        tags[TAG_ACCESS_POINT] = access_point_id
    tags["Name"] = instance_name(hub_id, user, server)
    return [{"Key": k, "Value": v} for k, v in tags.items()]


# -- the user's home: one EFS access point per unix user (docs/ARCHITECTURE.md §3, §8) ----------
UNIX_PREFIX = "jupyter-"
UNIX_MAX = 32


def unix_name(hub_user: str) -> str:
    """The unix user name the notebook bootstrap gives a JupyterHub user.

    A copy of ``ec2hub_bootstrap.notebook.unix_name`` (the instance cannot import this package,
    nor the hub the instance's); tests/spawner/test_spawner_payloads.py holds the two equal.
    """
    room = UNIX_MAX - len(UNIX_PREFIX)
    if re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", hub_user) and len(hub_user) <= room:
        return UNIX_PREFIX + hub_user
    digest = hashlib.sha256(hub_user.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stripped = re.sub(r"[^a-z0-9]+", "-", hub_user.lower()).strip("-")
    stripped = stripped[: room - 3 - len(digest)].strip("-") or "x"
    return f"{UNIX_PREFIX}{stripped}---{digest}"


def home_uid(unix: str) -> int:
    """The uid (and gid) of a unix user's home on EFS: derived from the name, 200000..999999.

    The access point enforces it (PosixUser) and creates the home with it (CreationInfo); the
    bootstrap takes it from the mounted home's owner, so the instance's user is the same uid. Two
    names may share a uid: harmless, each access point reaches only its own directory.
    """
    return 200000 + int(hashlib.sha256(unix.encode()).hexdigest(), 16) % 800000


def access_point_filter(file_system_id: str) -> dict:
    """DescribeAccessPoints of the homes' file system (paged with NextToken by the caller)."""
    return {"FileSystemId": file_system_id, "MaxResults": 1000}


def access_point_owner(access_point: Mapping, hub_id: str) -> str | None:
    """The unix user whose home ``access_point`` (a DescribeAccessPoints item) is, if this hub's."""
    tags = {t["Key"]: t["Value"] for t in access_point.get("Tags", [])}
    if tags.get(TAG_HUB) != hub_id or access_point.get("LifeCycleState", "available") != "available":
        return None
    return tags.get(TAG_UNIX_USER)


def access_point_params(*, hub_id: str, file_system_id: str, unix: str, replaces: str | None = None) -> dict:
    """CreateAccessPoint for one user's home: ``/home/<unix>``, owned by and only as its uid.

    EFS runs every NFS request through the access point as ``PosixUser`` (whoever the client
    claims to be, root included) and confines it to ``RootDirectory``, which it creates with
    ``CreationInfo`` at the first mount (EFS user guide, "Working with access points"). The
    ``ClientToken`` is derived from the home, so a retried call cannot make a second one (EFS
    answers ``AccessPointAlreadyExists`` instead). ``replaces`` names an access point of this home
    that was deleted: the new one gets a token of its own (EFS may remember the old token), still
    the same for every hub process that replaces that one.
    """
    uid = home_uid(unix)
    material = f"{hub_id}\0{file_system_id}\0{unix}" + (f"\0{replaces}" if replaces else "")
    return {
        "ClientToken": "ec2hub-" + hashlib.sha256(material.encode()).hexdigest()[:57],
        "FileSystemId": file_system_id,
        "PosixUser": {"Uid": uid, "Gid": uid},
        "RootDirectory": {
            "Path": f"/home/{unix}",
            "CreationInfo": {"OwnerUid": uid, "OwnerGid": uid, "Permissions": "0700"},
        },
        "Tags": [
            {"Key": TAG_HUB, "Value": hub_id},
            {"Key": TAG_UNIX_USER, "Value": unix},
            {"Key": "Name", "Value": f"ec2hub-{hub_id}-{unix}"[:MAX_TAG_VALUE]},
        ],
    }


def client_token(
    *, hub_id: str, user: str, server: str, attempt: str, instance_type: str, subnet_id: str
) -> str:
    """RunInstances ``ClientToken`` for one launch attempt (at most 64 ASCII characters).

    The same attempt, type and subnet always give the same token, so a retried call (ours after a
    throttle, or botocore's after a lost response) returns the instance the first call made instead
    of launching a second. Type and subnet are part of it because EC2 refuses a reused token whose
    parameters differ (``IdempotentParameterMismatch``).
    """
    material = f"{hub_id}\0{user}\0{server}\0{attempt}\0{instance_type}\0{subnet_id}"
    return "ec2hub-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:57]


def launch_params(
    *,
    launch_template_id: str,
    instance_type: str,
    subnet_id: str,
    tags: list[dict[str, str]],
    token: str,
    spot: bool,
) -> dict:
    """RunInstances parameters: one instance from the class's template, version ``$Default``.

    Tags go on the instance and its volumes here, all of them, so the result does not depend on
    how EC2 merges them with the template's own tag specifications.
    """
    params = {
        "LaunchTemplate": {"LaunchTemplateId": launch_template_id, "Version": "$Default"},
        "InstanceType": instance_type,
        "SubnetId": subnet_id,
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": token,
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": list(tags)},
            {"ResourceType": "volume", "Tags": list(tags)},
        ],
    }
    if spot:
        # One-time spot: an interruption terminates the instance (EC2 cannot stop a one-time
        # spot instance), which the watcher reports as Server.SpotInstanceTermination.
        params["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            },
        }
    return params


def hub_filters(hub_id: str) -> list[dict]:
    """DescribeInstances filters for every notebook instance of this hub, in any state."""
    return [
        {"Name": f"tag:{TAG_HUB}", "Values": [hub_id]},
        {"Name": "tag-key", "Values": [TAG_NOTEBOOK_MARKER]},
        {"Name": "instance-state-name", "Values": list(ALL_STATES)},
    ]


def server_key(user: str, server: str) -> tuple[str, str]:
    """(user, server) as the instance tags spell them (truncated like the tag values)."""
    return user[:MAX_TAG_VALUE], server[:MAX_TAG_VALUE]


def rename_tags(*, hub_id: str, user: str, server: str) -> list[dict[str, str]]:
    """CreateTags for an instance whose user or server was renamed: the tags that name them."""
    return [
        {"Key": TAG_USER, "Value": user[:MAX_TAG_VALUE]},
        {"Key": TAG_SERVER, "Value": server[:MAX_TAG_VALUE]},
        {"Key": "Name", "Value": instance_name(hub_id, user, server)},
    ]


def secret_name(secret_prefix: str, instance_id: str) -> str:
    """The SSM parameter holding a server's env: ``<secret_prefix><instance-id>``."""
    return f"{secret_prefix}{instance_id}"


def instance_arn(*, partition: str, region: str, account: str, instance_id: str) -> str:
    return f"arn:{partition}:ec2:{region}:{account}:instance/{instance_id}"


def _secret_value_params(name: str, env: Mapping[str, str]) -> dict:
    """What every PutParameter of a secret sends. ``Intelligent-Tiering`` picks the Advanced tier
    only if the env grows past the Standard 4 KB limit."""
    return {
        "Name": name,
        "Type": "SecureString",
        "Value": json.dumps(dict(env), sort_keys=True),
        "Tier": "Intelligent-Tiering",
    }


def secret_put_params(*, name: str, env: Mapping[str, str], hub_id: str, arn: str) -> dict:
    """PutParameter for a new secret (docs/ARCHITECTURE.md §4).

    The notebook role may read it only when its ``ec2hub:instance-arn`` tag equals the caller's
    ``ec2:SourceInstanceARN``.
    """
    return {
        **_secret_value_params(name, env),
        "Tags": [
            {"Key": TAG_HUB, "Value": hub_id},
            {"Key": TAG_INSTANCE_ARN, "Value": arn},
        ],
    }


def secret_overwrite_params(*, name: str, env: Mapping[str, str]) -> dict:
    """PutParameter replacing an existing secret's value (SSM refuses Tags with Overwrite)."""
    return {**_secret_value_params(name, env), "Overwrite": True}


def secret_list_filters(secret_prefix: str) -> list[dict]:
    """DescribeParameters filters for every secret under the prefix."""
    return [{"Key": "Name", "Option": "BeginsWith", "Values": [secret_prefix]}]


def ordered_subnets(
    subnets: Mapping[str, str], load: Mapping[str, int] | None = None
) -> list[tuple[str, str]]:
    """(AZ, subnet) pairs to try: the AZ with the fewest of this hub's live instances first.

    Ties keep the settings order, so a fresh hub spreads servers round-robin across AZs.
    """
    load = load or {}
    order = {az: i for i, az in enumerate(subnets)}
    return sorted(subnets.items(), key=lambda item: (load.get(item[0], 0), order[item[0]]))


def launch_plan(
    instance_types: Iterable[str], subnets: list[tuple[str, str]]
) -> list[tuple[str, str, str]]:
    """(instance type, AZ, subnet) in the order to try: every AZ for the preferred type first."""
    return [(itype, az, subnet) for itype in instance_types for az, subnet in subnets]


# -- the hub lease (ec2spawner.lease, docs/ARCHITECTURE.md §13) ---------------------------------
# One item per hub id in the lease table: who holds the lease and until when (epoch seconds).
LEASE_KEY = "hub_id"
_LEASE_NAMES = {"#hub": LEASE_KEY, "#holder": "holder", "#expires": "expires_at"}


def lease_acquire_params(*, table: str, hub_id: str, holder: str, now: float, duration: float) -> dict:
    """PutItem that takes or renews the lease of ``hub_id`` for ``holder`` until ``now + duration``.

    DynamoDB applies it only if nobody holds the lease, ``holder`` holds it already (a renewal),
    or the holder's lease expired before ``now``; otherwise it fails with
    ``ConditionalCheckFailedException`` and changes nothing (DynamoDB developer guide,
    "Condition expressions"). ``now`` is the caller's wall clock.
    """
    return {
        "TableName": table,
        "Item": {
            LEASE_KEY: {"S": hub_id},
            "holder": {"S": holder},
            "expires_at": {"N": f"{now + duration:.3f}"},
        },
        "ConditionExpression": "attribute_not_exists(#hub) OR #holder = :holder OR #expires < :now",
        "ExpressionAttributeNames": dict(_LEASE_NAMES),
        "ExpressionAttributeValues": {":holder": {"S": holder}, ":now": {"N": f"{now:.3f}"}},
    }


def lease_release_params(*, table: str, hub_id: str, holder: str) -> dict:
    """DeleteItem that gives the lease up, only if ``holder`` still holds it."""
    return {
        "TableName": table,
        "Key": {LEASE_KEY: {"S": hub_id}},
        "ConditionExpression": "#holder = :holder",
        "ExpressionAttributeNames": {"#holder": "holder"},
        "ExpressionAttributeValues": {":holder": {"S": holder}},
    }


def lease_read_params(*, table: str, hub_id: str) -> dict:
    """GetItem of the lease item (strongly consistent: the answer after the last write)."""
    return {"TableName": table, "Key": {LEASE_KEY: {"S": hub_id}}, "ConsistentRead": True}


def activity_env(*, idle_timeout: int, max_age: int, interval: int, backstop_grace: int) -> dict[str, str]:
    """What the instance's activity agent reads from the server's secret (seconds; 0: none)."""
    return {
        "EC2HUB_IDLE_TIMEOUT_S": str(idle_timeout),
        "EC2HUB_MAX_AGE_S": str(max_age),
        "EC2HUB_ACTIVITY_INTERVAL_S": str(interval),
        "EC2HUB_BACKSTOP_GRACE_S": str(backstop_grace),
    }
