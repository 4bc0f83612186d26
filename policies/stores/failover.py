"""Admission's store on Redis with a way down: the layer's failure policy (``StoreHealth``), this process's
memory as the fallback, and what was admitted by memory settled by memory."""

from __future__ import annotations

from typing import Any

from .base import AdmitResult, Reservation, Settlement
from .health import REDIS_ERRORS, StoreHealth
from .memory import MemoryStore
from .redis import RedisStore


class FailoverStore:
    name = "redis"

    def __init__(self, redis: RedisStore, memory: MemoryStore, health: StoreHealth) -> None:
        self.redis = redis
        self.memory = memory
        self.health = health
        self._local: set[str] = set()              # entries admitted by memory while Redis was down
        self._unsettled: list[Settlement] = []     # settlements Redis could not take yet

    async def admit(self, reservation: Reservation) -> AdmitResult:
        health = self.health
        if health.usable():
            try:
                result = await self.redis.admit(reservation)
                health.recovered()
                return result
            except REDIS_ERRORS as exc:
                health.failed("admit", exc)
        if health.mode == "fail_closed":
            raise health.refusal("limit store")
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
        except REDIS_ERRORS as exc:
            self.health.failed("settle", exc)
            self._unsettled.append(settlement)  # settled by the next sweep; the record is not lost
            return False

    async def sweep(self, tenants: list[str]) -> int:
        settled = await self.memory.sweep(tenants)
        if not self.health.usable():
            return settled
        try:
            while self._unsettled:
                settled += await self.redis.settle(self._unsettled[0])
                self._unsettled.pop(0)
            settled += await self.redis.sweep(tenants)
            self.health.recovered()
        except REDIS_ERRORS as exc:
            self.health.failed("sweep", exc)
        return settled

    async def _read(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.redis, method)(*args)
        except REDIS_ERRORS as exc:
            self.health.failed(method, exc)
            raise self.health.refusal("ledger store") from exc

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
        health = self.health
        if health.usable():
            try:
                return await self.redis.acquire(key, limit, holder, lease_s)
            except REDIS_ERRORS as exc:
                health.failed("acquire", exc)
        if health.mode == "fail_closed":
            raise health.refusal("limit store")
        self._local.add(holder)
        return await self.memory.acquire(key, limit, holder, lease_s)

    async def release(self, key: str, holder: str) -> None:
        if holder in self._local:
            self._local.discard(holder)
            await self.memory.release(key, holder)
            return
        try:
            await self.redis.release(key, holder)
        except REDIS_ERRORS as exc:
            self.health.failed("release", exc)  # the slot's lease ends it

    async def close(self) -> None:
        await self.redis.close()
