"""Whether this process can use Redis now, and what to do when it cannot: one policy for every store.

``fail_open``: the operation falls back to this process's memory (limits, breakers and cached answers count
for this process alone meanwhile); ``fail_closed``: an operation that decides whether a request may go on
raises 503 with ``Retry-After``, while bookkeeping (settling, releasing, reporting a breaker's outcome,
storing an answer) still goes to memory, because refusing it would stop nothing.

While Redis is away: after a refused or closed connection (known at once, at no cost) every operation
tries Redis again, so the first request after Redis is back uses it; after a timeout (Redis unreachable
rather than down, or too slow) requests leave Redis alone for ``retry_after_s``, so they do not pay a
timeout each, while a probe (a PING every 100 ms, when the layer gives one) ends that rest as soon as Redis
answers. ``gateway_store_degraded`` is 1 from the first failure until an operation or the probe succeeds.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import structlog
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from errors import Unavailable

from .. import metrics

T = TypeVar("T")
Mode = Literal["fail_open", "fail_closed"]

# What a store operation raises when Redis is away: a lost connection, a timeout (an OSError), a cluster
# that lost a node.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)
_TIMEOUTS = (RedisTimeout, asyncio.TimeoutError, socket.timeout)
_PROBE_S = 0.1


class StoreHealth:
    def __init__(
        self,
        mode: Mode = "fail_open",
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[], Awaitable[Any]] | None = None,
        probe_timeout_s: float = 0.5,
    ) -> None:
        """``probe``: a cheap Redis call (a PING) tried every 100 ms while Redis is away."""
        self.mode = mode
        self.retry_after_s = retry_after_s
        self._clock = clock
        self.probe = probe
        self._probe_timeout_s = probe_timeout_s
        self._probing: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self.degraded = False
        metrics.STORE_DEGRADED.set(0)  # a new layer starts healthy (a process has one; a reload keeps it)
        self._log = structlog.get_logger("gateway")
        self._on_recovery: list[Callable[[], None]] = []

    def on_recovery(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no await) each time Redis answers again after a failure."""
        self._on_recovery.append(listener)

    def usable(self) -> bool:
        """Whether to try Redis now: while it answers, and while it is away once its rest (if any) is over."""
        return not self.degraded or self._clock() >= self._down_until

    def failed(self, operation: str, exc: BaseException) -> None:
        # A refused or closed connection is known at once: the next operation may probe. A timeout costs
        # the caller redis_timeout_s: rest first.
        self._down_until = self._clock() + (self.retry_after_s if isinstance(exc, _TIMEOUTS) else 0.0)
        metrics.STORE_ERRORS.labels(operation, self.mode).inc()
        if not self.degraded:
            self.degraded = True
            metrics.STORE_DEGRADED.set(1)
            self._log.warning(
                "redis store unreachable",
                operation=operation,
                mode=self.mode,
                error=f"{type(exc).__name__}: {exc}",
            )
        if self.probe is not None and (self._probing is None or self._probing.done()):
            try:
                self._probing = asyncio.get_running_loop().create_task(self._probe_until_back())
            except RuntimeError:  # no running loop: the next operation tries Redis instead
                pass

    async def _probe_until_back(self) -> None:
        assert self.probe is not None
        while self.degraded:
            await asyncio.sleep(_PROBE_S)
            try:
                async with asyncio.timeout(self._probe_timeout_s):
                    await self.probe()
            except REDIS_ERRORS:
                continue
            self.recovered()

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            try:
                await self._probing
            except asyncio.CancelledError:
                pass
            self._probing = None

    def recovered(self) -> None:
        if self.degraded:
            self.degraded = False
            self._down_until = 0.0
            for listener in self._on_recovery:
                listener()
            metrics.STORE_DEGRADED.set(0)
            self._log.info("redis store reachable again")

    def refusal(self, what: str = "store") -> Unavailable:
        return Unavailable(
            f"The gateway's {what} (Redis) is unreachable; try again shortly.",
            headers={"Retry-After": str(max(1, round(self.retry_after_s)))},
        )

    async def call(
        self,
        operation: str,
        redis: Callable[[], Awaitable[T]],
        memory: Callable[[], Awaitable[T]],
        *,
        decides: bool,
    ) -> T:
        """``redis()`` when Redis is usable; on its failure, or while Redis rests, ``memory()`` (fail open, or
        bookkeeping that ``decides`` nothing) or 503 (fail closed and the operation decides)."""
        if self.usable():
            try:
                result = await redis()
            except REDIS_ERRORS as exc:
                self.failed(operation, exc)
            else:
                self.recovered()
                return result
        if decides and self.mode == "fail_closed":
            raise self.refusal()
        return await memory()
