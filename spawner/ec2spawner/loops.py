"""Objects shared by every spawner of one event loop: the watcher, sweeper, lease and prober.

Each is one per (hub id, ...) and per event loop (a hub process runs one loop; tests run many,
one after the other), created by the first spawner that needs it and stopped at shutdown.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """A registry of ``T`` by key, one dictionary per running event loop."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, T]] = (
            weakref.WeakKeyDictionary()
        )

    def _here(self) -> dict[Hashable, T]:
        return self._by_loop.setdefault(asyncio.get_running_loop(), {})

    def get_or_create(self, key: Hashable, make: Callable[[], T]) -> tuple[T, bool]:
        """The running loop's object for ``key``, made by ``make()`` on first use; and whether
        it was made just now (the first caller's settings win)."""
        here = self._here()
        created = key not in here
        if created:
            here[key] = make()
        return here[key], created

    def values(self) -> list[T]:
        return list(self._by_loop.get(asyncio.get_running_loop(), {}).values())

    def discard(self, key: Hashable) -> None:
        """Forget the running loop's object for ``key``, if any."""
        self._by_loop.get(asyncio.get_running_loop(), {}).pop(key, None)

    def pop_all(self) -> list[T]:
        """Forget (and return) every object of the running loop, for stopping them."""
        return list(self._by_loop.pop(asyncio.get_running_loop(), {}).values())
