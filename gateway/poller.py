"""A background loop of every gateway process that looks for shared work in the store layer: the batch runner
and the fine-tuning runner are two.

``tick`` runs every ``poll_s`` until ``close``; a failing tick (the store away) is logged and the loop looks
again next time. Work started for an item (a batch, a job) is one task per item id, tracked while it runs so
that a tick does not start it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from .logs import get_logger


class Poller:
    def __init__(self, name: str, poll_s: float) -> None:
        self._name, self._poll_s = name, poll_s
        self._working: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._log = get_logger()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"{self._name}-runner")

    async def tick(self) -> None:
        raise NotImplementedError

    def _stop_looking(self) -> list[asyncio.Task[None]]:
        """Stops looking for work; the loop's task and the work still running."""
        self._stop.set()
        return [t for t in (self._task, *self._working.values()) if t is not None]

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
            except Exception:  # the store failing must not end the runner: it looks again next time
                self._log.exception(f"{self._name} runner: looking for work failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._poll_s)

    def _spawn(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"{self._name}-{key}")
        self._working[key] = task
        task.add_done_callback(lambda _: self._working.pop(key, None))
