"""A deployment's in-flight cap (``max_concurrency``), shared by every gateway process through the store.

Wraps the deployment's backend: a request takes a slot for as long as the upstream call (and its stream)
lasts. When every slot is taken it waits, up to ``wait_s``, for one to free, then fails with
``DeploymentBusy`` (429) so that the alias's other deployments can take it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from backends import Backend, Endpoint, UpstreamResponse
from backends.errors import DeploymentBusy

from .stores.base import Store

_POLL_S = 0.02


class InFlightLimited(Backend):
    def __init__(self, backend: Backend, limit: int, store: Store, *, wait_s: float, lease_s: float) -> None:
        self.backend = backend
        self.id = backend.id
        self.limit = limit
        self._store = store
        self._key = "gw:{d:" + backend.id.replace("{", "%7B").replace("}", "%7D") + "}:inflight"
        self._wait_s = wait_s
        self._lease_s = lease_s
        self._freed = asyncio.Event()

    async def start(self) -> None:
        await self.backend.start()

    async def close(self) -> None:
        await self.backend.close()

    def send(self, endpoint: Endpoint, payload: dict[str, Any], *,
             stream: bool) -> AbstractAsyncContextManager[UpstreamResponse]:
        return self._send(endpoint, payload, stream)

    @asynccontextmanager
    async def _send(self, endpoint: Endpoint, payload: dict[str, Any], stream: bool) -> AsyncIterator[UpstreamResponse]:
        holder = uuid.uuid4().hex
        deadline = time.monotonic() + self._wait_s
        while not await self._store.acquire(self._key, self.limit, holder, self._lease_s):
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeploymentBusy(f"Deployment {self.id} has all {self.limit} of its concurrent requests in "
                                     "flight.", headers={"Retry-After": "1"})
            self._freed.clear()
            try:  # woken at once by a release in this process, else polls for other processes' releases
                async with asyncio.timeout(min(_POLL_S, left)):
                    await self._freed.wait()
            except TimeoutError:
                pass
        try:
            async with self.backend.send(endpoint, payload, stream=stream) as upstream:
                yield upstream
        finally:
            await asyncio.shield(self._store.release(self._key, holder))
            self._freed.set()
