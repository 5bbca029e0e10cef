"""Objects bound to an event loop (async HTTP clients): one per loop, closed with it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One lazily created object per running event loop, closed with its loop.

    Async HTTP clients hold connections bound to the loop that opened them;
    reusing one from another loop (``asyncio.run`` twice, notebooks, worker
    threads) fails, and one dropped without ``aclose()`` leaks its sockets.
    Each item is closed by ``closer``: when :meth:`aclose` / :meth:`close` is
    called, and otherwise when its loop shuts down — a started async
    generator per loop holds the item, and ``loop.shutdown_asyncgens()``
    (which ``asyncio.run`` and ``asyncio.Runner`` call) runs its ``finally``.
    """

    def __init__(
        self, factory: Callable[[], T], closer: Callable[[T], Awaitable[None]] | None = None
    ) -> None:
        self._factory = factory
        self._closer = closer
        self._items: dict[asyncio.AbstractEventLoop, tuple[T, object]] = {}
        self._lock = threading.Lock()
        self._pending: set[asyncio.Future[None]] = set()

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._items.get(loop)
            if entry is not None:
                return entry[0]
            for old in [old for old in self._items if old.is_closed()]:
                del self._items[old]
            item = self._factory()
            guard = self._guard(loop, item)
            self._items[loop] = (item, guard)
        await guard.__anext__()
        return item

    async def _guard(self, loop: asyncio.AbstractEventLoop, item: T) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                mine = self._items.get(loop, (None,))[0] is item
                if mine:
                    del self._items[loop]
            if mine and self._closer is not None:
                await self._closer(item)

    def _take_all(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        with self._lock:
            items = [(loop, entry[0]) for loop, entry in self._items.items()]
            self._items.clear()
        return items

    async def aclose(self) -> None:
        """Close every item: this loop's here, the others' in their own loops."""
        current = asyncio.get_running_loop()
        for loop, item in self._take_all():
            if loop is current and self._closer is not None:
                await self._closer(item)
            else:
                self._close_elsewhere(loop, item)

    def close(self) -> None:
        """Close every item from synchronous code (see :meth:`aclose`)."""
        for loop, item in self._take_all():
            self._close_elsewhere(loop, item)

    def _close_elsewhere(self, loop: asyncio.AbstractEventLoop, item: T) -> None:
        if self._closer is None or loop.is_closed():
            # A loop closed without shutdown_asyncgens(): its transports
            # cannot be closed any more; nothing left to do but drop it.
            return
        coroutine = self._closer(item)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:
            task: asyncio.Future[None] = loop.create_task(coroutine)  # type: ignore[arg-type]
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(coroutine, loop)  # type: ignore[arg-type]
        else:
            loop.run_until_complete(coroutine)
