"""Deploy a synthesized CDK cloud assembly into the AWS emulator, as `cdk deploy` would into AWS.

The sandbox uses exactly the launch templates, user data and settings document that `cdk deploy`
creates: it reads the stack's template and asset manifest from the cloud assembly (`cdk.out/`),
uploads the file assets to the emulator's S3, and creates the stack through the emulator's
CloudFormation. What the emulator's CloudFormation cannot create is reported by name, never
skipped silently (moto only emits a Python warning for those).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Public SSM parameters the catalog may name that the emulator does not know. The sandbox's
# "AMI" is the host machine itself, so every image id stands for the same simulated image.
STAND_IN_AMI_NAME = "ec2hub-sandbox-image"


@dataclass
class Deployment:
    stack_name: str
    outputs: dict[str, str]
    resources: dict[str, str]  # logical id -> physical id
    resource_types: dict[str, str]  # logical id -> type
    not_created: list[tuple[str, str]] = field(default_factory=list)  # (logical id, type)
    stood_in_parameters: list[str] = field(default_factory=list)

    def physical_ids(self, resource_type: str) -> list[str]:
        return [self.resources[k] for k, t in self.resource_types.items() if t == resource_type and k in self.resources]


def find_stack(assembly: Path, stack_name: str | None = None) -> dict[str, Any]:
    """The stack artifact entry of manifest.json (the only stack when no name is given)."""
    manifest = json.loads((assembly / "manifest.json").read_text())
    stacks = {
        name: art
        for name, art in manifest.get("artifacts", {}).items()
        if art.get("type") == "aws:cloudformation:stack"
    }
    if stack_name is None:
        if len(stacks) != 1:
            raise ValueError(f"{assembly}: expected one stack, found {sorted(stacks)}")
        stack_name = next(iter(stacks))
    if stack_name not in stacks:
        raise ValueError(f"{assembly}: no stack {stack_name!r} (have {sorted(stacks)})")
    art = stacks[stack_name]
    return {"name": stack_name, **art}


def is_custom_resource(resource_type: str) -> bool:
    return resource_type.startswith("Custom::") or resource_type == "AWS::CloudFormation::CustomResource"


def prepare_template(template: dict[str, Any]) -> dict[str, Any]:
    """What CloudFormation would accept from `cdk deploy`, minus what needs the real AWS.

    - The `BootstrapVersion` parameter and its `Rules` check a bootstrapped account; the emulator
      has no bootstrap stack, and moto does not evaluate Rules.
    - Custom resources are answered by a Lambda function, which the emulator cannot run (moto
      runs Lambda code in Docker): CloudFormation would wait for them forever. They are left out,
      with the `DependsOn` entries that name them; `deploy_stack` reports them as not created. A
      template whose other resources read a custom resource's attributes is refused, since leaving
      it out would change what those resources are.
    """
    template = json.loads(json.dumps(template))
    for res in template.get("Resources", {}).values():
        if res.get("Type") == "AWS::EC2::Instance":
            _hoist_primary_interface(res.get("Properties", {}))
    template.get("Parameters", {}).pop("BootstrapVersion", None)
    template.pop("Rules", None)
    resources = template.get("Resources", {})
    custom = {name for name, res in resources.items() if is_custom_resource(res.get("Type", ""))}
    for name in custom:
        del resources[name]
    for name, res in resources.items():
        depends = res.get("DependsOn")
        if isinstance(depends, str):
            depends = [depends]
        if depends:
            kept = [d for d in depends if d not in custom]
            if kept:
                res["DependsOn"] = kept
            else:
                res.pop("DependsOn")
        text = json.dumps({k: v for k, v in res.items() if k != "DependsOn"})
        for gone in custom:
            if f'"Ref": "{gone}"' in text or f'["{gone}"' in text or f'"{gone}.' in text:
                raise ValueError(f"resource {name} reads custom resource {gone}, which the emulator cannot run")
    return template


def _hoist_primary_interface(props: dict[str, Any]) -> None:
    """moto's CloudFormation ignores an Instance's `NetworkInterfaces` (the instance lands in no
    subnet of the VPC); the same primary interface as `SubnetId` + `SecurityGroupIds` is what
    EC2 makes of it, and moto honours those."""
    interfaces = props.get("NetworkInterfaces") or []
    primary = [n for n in interfaces if str(n.get("DeviceIndex")) == "0"]
    if len(interfaces) != 1 or not primary or "SubnetId" in props:
        return
    nic = primary[0]
    props.pop("NetworkInterfaces")
    props["SubnetId"] = nic["SubnetId"]
    if nic.get("GroupSet"):
        props["SecurityGroupIds"] = nic["GroupSet"]
    if nic.get("PrivateIpAddress"):
        props["PrivateIpAddress"] = nic["PrivateIpAddress"]


def _substitute(text: str, account: str, region: str) -> str:
    return (
        text.replace("${AWS::AccountId}", account)
        .replace("${AWS::Region}", region)
        .replace("${AWS::Partition}", "aws")
    )


def _zip_directory(path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(path.rglob("*")):
            if item.is_file() and "__pycache__" not in item.parts:
                archive.write(item, item.relative_to(path).as_posix())
    return buffer.getvalue()


def upload_assets(s3, assembly: Path, assets_file: str, account: str, region: str) -> list[str]:
    """Upload every file asset of the manifest to its destination bucket; returns s3:// URLs."""
    manifest = json.loads((assembly / assets_file).read_text())
    uploaded = []
    for asset in manifest.get("files", {}).values():
        source = assembly / asset["source"]["path"]
        packaging = asset["source"].get("packaging", "file")
        body = _zip_directory(source) if packaging == "zip" and source.is_dir() else source.read_bytes()
        for destination in asset["destinations"].values():
            bucket = _substitute(destination["bucketName"], account, region)
            key = _substitute(destination["objectKey"], account, region)
            try:
                s3.head_bucket(Bucket=bucket)
            except s3.exceptions.ClientError:
                # Outside us-east-1 S3 wants the bucket's region named (a target in another region).
                where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
                s3.create_bucket(Bucket=bucket, **where)
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            uploaded.append(f"s3://{bucket}/{key}")
    return uploaded


def stand_in_ssm_parameters(ssm, ec2, template: dict[str, Any], account: str) -> list[str]:
    """Create the public AMI parameters the template reads that the emulator lacks.

    Returns the parameter names it created, so the sandbox can say so at start-up.
    """
    missing = missing_public_parameters(ssm, template)
    if missing:
        image_id = stand_in_image(ec2)
        for name in missing:
            _seed_public_parameter(account, ssm.meta.region_name, name, image_id)
    return missing


def missing_public_parameters(ssm, template: dict[str, Any]) -> list[str]:
    """The SSM parameters the template's parameters default to that the emulator does not know."""
    missing = []
    for parameter in template.get("Parameters", {}).values():
        if not parameter.get("Type", "").startswith("AWS::SSM::Parameter::Value"):
            continue
        name = parameter.get("Default")
        if not name:
            continue
        try:
            ssm.get_parameter(Name=name)
        except ssm.exceptions.ParameterNotFound:
            missing.append(name)
    return missing


def _seed_public_parameter(account: str, region: str, name: str, value: str) -> None:
    """Add an AWS-owned ("/aws/service/...") parameter, which the SSM API refuses to create.

    Public parameters are AWS's to publish, so this reaches into the emulator's backend: it works
    only where the emulator runs in this process, as the sandbox's and the tests' does.
    """
    from moto.ssm.models import Parameter, ssm_backends

    parameters = ssm_backends[account][region]._parameters
    parameters[name].append(
        Parameter(
            account_id=account,
            name=name,
            value=value,
            parameter_type="String",
            description="stood in by the ec2hub sandbox",
            allowed_pattern=None,
            keyid=None,
            last_modified_date=time.time(),
            version=1,
            data_type="aws:ec2:image",
        )
    )


def stand_in_image(ec2) -> str:
    """The emulator's one simulated image (registered once)."""
    found = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [STAND_IN_AMI_NAME]}])
    if found["Images"]:
        return found["Images"][0]["ImageId"]
    return ec2.register_image(
        Name=STAND_IN_AMI_NAME,
        Architecture="x86_64",
        RootDeviceName="/dev/xvda",
        VirtualizationType="hvm",
        Description="The sandbox's simulated AMI: the host machine's root, copy-on-write",
    )["ImageId"]


def deploy_stack(
    cfn, stack_name: str, template: dict[str, Any], *, original: dict[str, Any] | None = None, timeout_s: float = 120
) -> Deployment:
    """Create (or replace) the stack and report what the emulator created and what it could not.

    ``original`` is the template before :func:`prepare_template`, so what it left out is reported too.
    """
    try:
        cfn.delete_stack(StackName=stack_name)
    except cfn.exceptions.ClientError:
        pass
    body = json.dumps(template)
    cfn.create_stack(StackName=stack_name, TemplateBody=body, Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])
    return _wait_for_stack(cfn, stack_name, template, original, timeout_s)


def _wait_for_stack(cfn, stack_name: str, template: dict[str, Any], original: dict[str, Any] | None,
                    timeout_s: float) -> Deployment:
    deadline = time.monotonic() + timeout_s
    while True:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = stack["StackStatus"]
        if status.endswith("_COMPLETE") and "ROLLBACK" not in status:
            break
        if "FAILED" in status or "ROLLBACK" in status:
            reason = stack.get("StackStatusReason", "")
            raise RuntimeError(f"stack {stack_name}: {status} {reason}".strip())
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {stack_name}: still {status} after {timeout_s:.0f} s")
        time.sleep(0.2)
    resources: dict[str, str] = {}
    paginator = cfn.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack_name):
        for item in page["StackResourceSummaries"]:
            if item.get("PhysicalResourceId"):
                resources[item["LogicalResourceId"]] = item["PhysicalResourceId"]
    types = {logical: res["Type"] for logical, res in (original or template).get("Resources", {}).items()}
    not_created = sorted((logical, kind) for logical, kind in types.items() if logical not in resources)
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])}
    return Deployment(stack_name, outputs, resources, types, not_created)


def update_stack(cfn, stack_name: str, template: dict[str, Any], *, original: dict[str, Any] | None = None,
                 timeout_s: float = 120) -> Deployment:
    """UpdateStack with ``template`` (``cdk deploy`` of a changed app), waited for and reported as
    :func:`deploy_stack` reports a creation. An unchanged template is no update (CloudFormation's
    "No updates are to be performed"), and reported the same way."""
    try:
        cfn.update_stack(StackName=stack_name, TemplateBody=json.dumps(template),
                         Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])
    except cfn.exceptions.ClientError as error:
        if "No updates are to be performed" not in str(error):
            raise
    return _wait_for_stack(cfn, stack_name, template, original, timeout_s)


def deploy_assembly(
    client: Callable[[str], Any], assembly: Path, *, account: str, region: str, stack_name: str | None = None,
    update: bool = False,
) -> Deployment:
    """Upload assets, stand in missing public parameters, create the stack (``update``: update it).

    ``client(service_name)`` returns a boto3 client talking to the emulator. Standing in a public
    parameter needs the emulator in this process; an update in another process (``python -m
    sandbox deploy``) needs every one of them to exist already.
    """
    art = find_stack(assembly, stack_name)
    props = art.get("properties", {})
    original = json.loads((assembly / props["templateFile"]).read_text())
    s3, ssm, ec2, cfn = (client(name) for name in ("s3", "ssm", "ec2", "cloudformation"))
    for dep in art.get("dependencies", []):
        if dep.endswith(".assets"):
            upload_assets(s3, assembly, f"{dep}.json", account, region)
    template = prepare_template(original)
    name = props.get("stackName", art["name"])
    if update and (missing := missing_public_parameters(ssm, template)):
        raise RuntimeError(f"the running emulator does not know the public parameters {missing}, which only "
                           "its own process can stand in: stop the sandbox and start it again")
    stood_in = [] if update else stand_in_ssm_parameters(ssm, ec2, template, account)
    if update:
        deployment = update_stack(cfn, name, template, original=original)
    else:
        deployment = deploy_stack(cfn, name, template, original=original)
    deployment.stood_in_parameters = stood_in
    return deployment
