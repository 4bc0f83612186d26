"""Redis with a way down: fail open (this process's memory, a warning and a metric) or fail closed (503),
trying Redis again by itself every ``retry_redis_after_s``."""

from __future__ import annotations

from typing import Any, Literal

from redis.exceptions import RedisError

from backends.errors import Unavailable

from ..clock import SYSTEM, Clock
from .base import AdmitResult, Reservation, Settlement
from .memory import MemoryStore
from .redis import RedisStore


class FailoverStore:
    name = "redis"

    def __init__(self, redis: RedisStore, memory: MemoryStore, *, mode: Literal["fail_open", "fail_closed"],
                 retry_after_s: float, on_failure: Any, on_recovery: Any, clock: Clock = SYSTEM) -> None:
        self._clock = clock
        self.redis = redis
        self.memory = memory
        self._mode = mode
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._down = False
        self._local: set[str] = set()              # entries admitted by memory while Redis was down
        self._unsettled: list[Settlement] = []     # settlements Redis could not take yet
        self._on_failure = on_failure
        self._on_recovery = on_recovery

    def _failed(self, exc: Exception, operation: str) -> None:
        self._down_until = self._clock.monotonic() + self._retry_after_s
        if not self._down:
            self._down = True
        self._on_failure(operation, exc, self._mode)

    def _usable(self) -> bool:
        return self._clock.monotonic() >= self._down_until

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            self._on_recovery()

    async def admit(self, reservation: Reservation) -> AdmitResult:
        if self._usable():
            try:
                result = await self.redis.admit(reservation)
                self._recovered()
                return result
            except (RedisError, OSError) as exc:
                self._failed(exc, "admit")
        if self._mode == "fail_closed":
            raise Unavailable("The gateway's limit store (Redis) is unreachable; try again shortly.",
                              headers={"Retry-After": str(max(1, round(self._retry_after_s)))})
        result = await self.memory.admit(reservation)
        if result.outcome == "ok":
            self._local.add(reservation.entry_id)
        return result

    async def settle(self, settlement: Settlement) -> bool:
        entry = settlement.reservation.entry_id
        if entry in self._local:
            self._local.discard(entry)
            return await self.memory.settle(settlement)
        try:
            return await self.redis.settle(settlement)
        except (RedisError, OSError) as exc:
            self._failed(exc, "settle")
            self._unsettled.append(settlement)  # settled by the next sweep; the record is not lost
            return False

    async def sweep(self, tenants: list[str]) -> int:
        settled = await self.memory.sweep(tenants)
        if not self._usable():
            return settled
        try:
            while self._unsettled:
                settled += await self.redis.settle(self._unsettled[0])
                self._unsettled.pop(0)
            settled += await self.redis.sweep(tenants)
            self._recovered()
        except (RedisError, OSError) as exc:
            self._failed(exc, "sweep")
        return settled

    async def _read(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.redis, method)(*args)
        except (RedisError, OSError) as exc:
            self._failed(exc, method)
            raise Unavailable("The gateway's ledger store (Redis) is unreachable; try again shortly.") from exc

    async def aggregates(self, tenant: str, days: list[str]) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = await self._read("aggregates", tenant, days)
        return result

    async def records(self, tenant: str, start: float, end: float, limit: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._read("records", tenant, start, end, limit)
        return result

    async def spent(self, key: str) -> tuple[int, int]:
        result: tuple[int, int] = await self._read("spent", key)
        return result

    async def acquire(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        if self._usable():
            try:
                return await self.redis.acquire(key, limit, holder, lease_s)
            except (RedisError, OSError) as exc:
                self._failed(exc, "acquire")
        if self._mode == "fail_closed":
            raise Unavailable("The gateway's limit store (Redis) is unreachable; try again shortly.")
        self._local.add(holder)
        return await self.memory.acquire(key, limit, holder, lease_s)

    async def release(self, key: str, holder: str) -> None:
        if holder in self._local:
            self._local.discard(holder)
            await self.memory.release(key, holder)
            return
        try:
            await self.redis.release(key, holder)
        except (RedisError, OSError) as exc:
            self._failed(exc, "release")  # the slot's lease ends it

    async def close(self) -> None:
        await self.redis.close()
