"""Admission: budget, rate limits and queueing, concurrency; the ledger's reservation and settlement.

Not built yet (issue 3): every request is admitted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .call import Call


class Admission:
    @asynccontextmanager
    async def admit(self, call: Call) -> AsyncIterator[None]:
        """Wait for (or refuse) the request's place; on exit settle what it used."""
        yield

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
