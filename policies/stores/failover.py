"""Admission's store on Redis with a way down: the layer's failure policy (``StoreHealth``), this process's
memory as the fallback, and what was admitted by memory settled by memory, then replayed into Redis.

Replay: a request admitted and settled in memory while Redis was away (fail open) is written to Redis once
it answers again, as a reservation without buckets, slots or budget limits (the request already ran; its
cost must count even past a budget) settled at once. Redis refuses a second reservation of one request id,
so a record is never doubled, whichever process or attempt replays it.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from dataclasses import replace
from typing import Any

import structlog

from .base import AdmitResult, Reservation, Settlement
from .health import REDIS_ERRORS, StoreHealth
from .memory import MemoryStore
from .redis import RedisStore

_REPLAY_MAX = 100_000  # records kept for replay while Redis is away; beyond, the oldest are dropped (logged)
_REPLAY_BATCH = 200  # replayed together (the Redis store batches them into a few script calls)


class FailoverStore:
    name = "redis"

    def __init__(self, redis: RedisStore, memory: MemoryStore, health: StoreHealth) -> None:
        self.redis = redis
        self.memory = memory
        self.health = health
        self._local: set[str] = set()  # entries admitted by memory while Redis was down
        self._unsettled: list[Settlement] = []  # settlements Redis could not take yet
        self._replay: collections.deque[Settlement] = (
            collections.deque()
        )  # settled in memory, not yet in Redis
        self._replaying: asyncio.Task[int] | None = None
        self._dropped = 0
        health.on_recovery(self._replay_soon)

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
            settled = await self.memory.settle(settlement)
            if settled:
                if len(self._replay) >= _REPLAY_MAX:
                    self._replay.popleft()
                    self._dropped += 1
                self._replay.append(settlement)
                if not self.health.degraded:
                    self._replay_soon()
            return settled
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
        await self.replay()
        return settled

    def _replay_soon(self) -> None:
        if self._replay and (self._replaying is None or self._replaying.done()):
            try:
                self._replaying = asyncio.get_running_loop().create_task(self.replay())
            except RuntimeError:  # no loop (a test calling the health directly): the next sweep replays
                pass

    async def replay(self) -> int:
        """Writes the records settled in memory while Redis was away into Redis, each once; returns how many
        were written (those Redis already held are skipped)."""
        written = 0
        if self._dropped:
            structlog.get_logger("gateway").warning(
                "ledger records dropped before Redis came back", count=self._dropped
            )
            self._dropped = 0
        while self._replay:
            batch = [self._replay[i] for i in range(min(_REPLAY_BATCH, len(self._replay)))]
            try:
                written += sum(await asyncio.gather(*(self._replay_one(s) for s in batch)))
            except REDIS_ERRORS as exc:
                self.health.failed("replay", exc)
                break
            for _ in batch:
                self._replay.popleft()
        return written

    async def _replay_one(self, settlement: Settlement) -> bool:
        r = settlement.reservation
        again = replace(
            r,
            buckets=[],
            slots=[],
            est_cost=settlement.cost,
            attempt=uuid.uuid4().hex,
            spends=[replace(s, limit=None, soft=None) for s in r.spends],
        )
        if (await self.redis.admit(again)).outcome != "ok":
            return False  # "dup": Redis has this request's record already
        return await self.redis.settle(replace(settlement, reservation=again))

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
        if self._replaying is not None:
            await asyncio.gather(self._replaying, return_exceptions=True)
        if self._replay and not self.health.degraded:
            await self.replay()
        await self.redis.close()
