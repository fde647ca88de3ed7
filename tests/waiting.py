"""Waiting on a state in tests: poll a predicate until it holds, bounded by a deadline.

CI runs on a loaded 2-core machine: a test waits for the state it needs (with a generous
deadline), never for a fixed time. One copy for every suite (tests/ is on pytest's pythonpath).
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (``0.0.0.0``: free on every loopback address)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable, timeout: float = 30.0, what: str = "condition", *,
               interval: float = 0.2, error: type[Exception] = AssertionError):
    """``predicate()``'s first truthy value; ``error`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def until(predicate: Callable, timeout: float = 10.0, what: str = "condition", *,
                interval: float = 0.05):
    """The same on an event loop; ``predicate`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
