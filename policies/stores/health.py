"""Whether this process can use Redis now, and what to do when it cannot: one policy for every store.

``fail_open``: the operation falls back to this process's memory (limits, breakers and cached answers count
for this process alone meanwhile); ``fail_closed``: an operation that decides whether a request may go on
raises 503 with ``Retry-After``, while bookkeeping (settling, releasing, reporting a breaker's outcome,
storing an answer) still goes to memory, because refusing it would stop nothing. After a failure Redis is
left alone for ``retry_after_s``, then the next operation tries it again; ``gateway_store_degraded`` is 1
from the first failure until an operation succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import structlog
from redis.exceptions import RedisClusterException, RedisError

from errors import Unavailable

from .. import metrics

T = TypeVar("T")
Mode = Literal["fail_open", "fail_closed"]

# What a store operation raises when Redis is away: a lost connection, a timeout (an OSError), a cluster
# that lost a node.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


class StoreHealth:
    def __init__(self, mode: Mode = "fail_open", retry_after_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self.degraded = False
        self._log = structlog.get_logger("gateway")

    def usable(self) -> bool:
        """Whether to try Redis now (False for ``retry_after_s`` after a failure)."""
        return not self.degraded or self._clock() >= self._down_until

    def failed(self, operation: str, exc: BaseException) -> None:
        self._down_until = self._clock() + self.retry_after_s
        metrics.STORE_ERRORS.labels(operation, self.mode).inc()
        if not self.degraded:
            self.degraded = True
            metrics.STORE_DEGRADED.set(1)
            self._log.warning("redis store unreachable", operation=operation, mode=self.mode,
                              error=f"{type(exc).__name__}: {exc}")

    def recovered(self) -> None:
        if self.degraded:
            self.degraded = False
            metrics.STORE_DEGRADED.set(0)
            self._log.info("redis store reachable again")

    def refusal(self, what: str = "store") -> Unavailable:
        return Unavailable(f"The gateway's {what} (Redis) is unreachable; try again shortly.",
                           headers={"Retry-After": str(max(1, round(self.retry_after_s)))})

    async def call(self, operation: str, redis: Callable[[], Awaitable[T]],
                   memory: Callable[[], Awaitable[T]], *, decides: bool) -> T:
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
