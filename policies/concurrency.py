"""A deployment's in-flight cap (``max_concurrency``), shared by every gateway process through the store.

An attempt (policies/resilience.py) takes one of the deployment's slots before it calls the backend and
gives it back when the upstream call (and its stream) ends. When every slot is taken it waits, up to
``wait_s``, for one to free, then fails with ``DeploymentBusy`` (429) so that the alias's other deployments
can take it. The backend itself is left as it is, so its ``ready`` and ``failure`` are what readiness and
reloads read.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from errors import DeploymentBusy

from .stores.base import Store

_POLL_S = 0.02


class InFlightCap:
    def __init__(self, deployment: str, limit: int, store: Store, *, wait_s: float, lease_s: float) -> None:
        self.deployment = deployment
        self.limit = limit
        self._store = store
        self._key = "gw:{d:" + deployment.replace("{", "%7B").replace("}", "%7D") + "}:inflight"
        self._wait_s = wait_s
        self._lease_s = lease_s
        self._freed = asyncio.Event()

    async def take(self) -> str:
        """A slot, waiting up to ``wait_s`` for one; returns the holder to ``give_back``."""
        holder = uuid.uuid4().hex
        deadline = time.monotonic() + self._wait_s
        while not await self._store.acquire(self._key, self.limit, holder, self._lease_s):
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeploymentBusy(
                    f"Deployment {self.deployment} has all {self.limit} of its concurrent "
                    "requests in flight.",
                    headers={"Retry-After": "1"},
                )
            self._freed.clear()
            try:  # woken at once by a release in this process, else polls for other processes' releases
                async with asyncio.timeout(min(_POLL_S, left)):
                    await self._freed.wait()
            except TimeoutError:
                pass
        return holder

    async def give_back(self, holder: str) -> None:
        await asyncio.shield(self._store.release(self._key, holder))
        self._freed.set()
