"""The AWS seam (ec2spawner.aws): its thread pool, its GC pause, its error kinds and ``ignore=``."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest
from ec2spawner import aws as seam
from ec2spawner.aws import Aws, AwsError, ErrorKind
from spawner_testing import REGION


async def test_calls_run_on_the_seams_own_pool_sized_to_its_connections(emulator, monkeypatch):
    # 20 calls that each wait for all the others: they complete only if 20 run at once, which the
    # loop's default executor (CPUs + 4 threads) does not allow on a small machine.
    aws = Aws(REGION)  # max_pool_connections=50
    together = threading.Barrier(20, timeout=10)
    threads = set()

    def invoke(self, service, operation, params):
        threads.add(threading.current_thread().name)
        together.wait()
        return {"Account": "123456789012"}

    monkeypatch.setattr(Aws, "_invoke", invoke)
    answers = await asyncio.gather(*(aws.call("sts", "GetCallerIdentity") for _ in range(20)))
    assert answers == [{"Account": "123456789012"}] * 20
    assert len(threads) == 20 and all(t.startswith(f"ec2hub-aws-{REGION}") for t in threads)


async def test_cyclic_gc_is_paused_for_the_parse_only(emulator, monkeypatch):
    aws = Aws(REGION)
    during_call, during_parse = [], []
    invoke, parse = Aws._invoke, seam._ChunkedEC2Parser._parse_xml_string_to_dom

    def recording_invoke(self, service, operation, params):
        during_call.append(gc.isenabled())
        return invoke(self, service, operation, params)

    def recording_parse(self, xml_string):
        during_parse.append(gc.isenabled())
        return parse(self, xml_string)

    monkeypatch.setattr(Aws, "_invoke", recording_invoke)
    monkeypatch.setattr(seam._ChunkedEC2Parser, "_parse_xml_string_to_dom", recording_parse)
    assert gc.isenabled()
    await aws.describe_instances([{"Name": "tag:ec2hub:hub", "Values": ["nobody"]}])
    assert during_call == [True]  # the network call (and botocore's retries) with the collector on
    assert during_parse and not any(during_parse)
    assert gc.isenabled()


async def test_ignore_turns_the_named_kinds_into_none(emulator):
    aws = Aws(REGION)
    assert await aws.call("ssm", "DeleteParameter", Name="/ec2hub/none/x", ignore={ErrorKind.NOT_FOUND}) is None
    with pytest.raises(AwsError) as info:
        await aws.call("ssm", "DeleteParameter", Name="/ec2hub/none/x")
    assert (info.value.kind, info.value.code) == (ErrorKind.NOT_FOUND, "ParameterNotFound")


@pytest.mark.parametrize(("code", "kind"), [
    ("InsufficientFreeAddressesInSubnet", ErrorKind.CAPACITY),  # another AZ's subnet may have room
    ("InsufficientInstanceCapacity", ErrorKind.CAPACITY),
    ("VcpuLimitExceeded", ErrorKind.QUOTA),
    ("RequestLimitExceeded", ErrorKind.THROTTLED),
    ("InvalidInstanceID.NotFound", ErrorKind.NOT_FOUND),
    ("SomethingNew", ErrorKind.OTHER),
])
def test_error_codes_map_to_kinds(code, kind):
    assert seam.classify(code) is kind
