"""Getting an answer from an alias's deployments. Not built yet (issue 4): one attempt, no retry."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from backends import UpstreamResponse
from backends.errors import GatewayError

from .call import Call
from .router import Router


class Resilience:
    def __init__(self, router: Router) -> None:
        self.router = router

    @asynccontextmanager
    async def send(self, call: Call) -> AsyncIterator[UpstreamResponse]:
        """Route and send; the context holds the upstream connection. Sets ``record.deployment``."""
        backend = self.router.pick(call.alias)
        record = call.record
        record.deployment = backend.id
        sent = time.perf_counter()
        answered = False
        try:
            async with backend.send(call.endpoint, call.body, stream=call.stream) as upstream:
                answered = True
                record.upstream_s = time.perf_counter() - sent
                record.attempts.append(f"{backend.id}:{upstream.status}")
                yield upstream
        except GatewayError as exc:
            if not answered:
                record.attempts.append(f"{backend.id}:{exc.status}")
            raise

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
