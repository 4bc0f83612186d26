"""Retention per tenant (``tenants[].retention_days``): a tenant's stored responses, files (uploads and batch
outputs) and request-log records are kept no longer than it says, when that is shorter than the global setting.

Stored responses and file records are written with the shorter TTL, so the store expires them (Redis itself, or
the memory store's purge). ``Retention.sweep`` (every ``SWEEP_EVERY_S`` in the background) does the rest: it
deletes the bytes of files whose record has expired (any tenant's: the global ``files.ttl_s`` leaves them too),
and the request-log records of tenants whose retention is shorter than ``request_log.retention_days`` (the
request log's own pruning keeps the global setting).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from policies.clock import Clock

from ..keys import GATEWAY

if TYPE_CHECKING:
    from ..config import TenantConfig
    from ..files import Files
    from ..requestlog import RequestLog

SWEEP_EVERY_S = 300.0
DAY_S = 86400.0


def retention_s(tenant: TenantConfig) -> float | None:
    """How long the tenant's data is kept, in seconds (None: the global settings)."""
    return None if tenant.retention_days is None else tenant.retention_days * DAY_S


class Retention:
    def __init__(self, app: web.Application, files: Files, log: RequestLog | None, clock: Clock) -> None:
        self._app, self._files, self._log, self._clock = app, files, log, clock

    async def sweep(self) -> dict[str, int]:
        """Deletes what is past its tenant's retention; returns how many files and request-log records went."""
        config = self._app[GATEWAY].loaded.config
        files = 0
        for tenant in config.tenants:
            files += await self._files.drop_expired(tenant.name)
        records = 0
        if self._log is not None:
            days = {
                t.name: t.retention_days
                for t in config.tenants
                if t.retention_days is not None and t.retention_days < config.request_log.retention_days
            }
            if days:
                records = await self._log.prune(days, self._clock.time())
        return {"files": files, "request_log_records": records}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                await self.sweep()
            except Exception:  # a store or disk error: the next sweep tries again
                from ..logs import get_logger

                get_logger().exception("retention sweep failed")


RETENTION = web.AppKey("retention", Retention)


async def background(app: web.Application) -> AsyncIterator[None]:
    """The sweep's task, for the app's ``cleanup_ctx``."""
    task = asyncio.get_running_loop().create_task(app[RETENTION].run())
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
