"""The store in this process's memory: the embedded default, and the fallback when Redis is unreachable.

Every method runs without awaiting inside, so on one event loop each is atomic like the Redis scripts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ..clock import SYSTEM
from .base import AdmitResult, Reservation, Settlement, settle_at_estimate


class MemoryStore:
    name = "memory"

    def __init__(
        self, retention_days: int = 400, max_records: int = 100_000, clock: Callable[[], float] = SYSTEM.time
    ) -> None:
        self._clock = clock
        self._retention_s = retention_days * 86400
        self._max_records = max_records  # records (not aggregates) kept in memory: the newest
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._slots: dict[str, dict[str, float]] = defaultdict(dict)  # key -> entry -> lease expiry
        self._spend: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # key -> [spent, reserved]
        self._open: dict[str, tuple[Reservation, float]] = {}  # entry -> (reservation, deadline)
        self._records: dict[str, dict[str, Any]] = {}
        self._aggregates: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def _level(self, key: str, capacity: float, rate: float, now: float) -> float:
        tokens, at = self._buckets.get(key, (capacity, now))
        return min(capacity, tokens + max(0.0, now - at) * rate)

    async def admit(self, reservation: Reservation) -> AdmitResult:
        now = self._clock()
        admitted = self._open.get(reservation.entry_id)
        if admitted is not None and admitted[0].attempt == reservation.attempt:
            return AdmitResult("ok", store=self.name)  # this very admission, sent again: it holds already
        if admitted is not None or reservation.entry_id in self._records:
            return AdmitResult("dup")
        levels: list[float] = []
        wait, failed = 0.0, -1
        for i, bucket in enumerate(reservation.buckets):
            level = self._level(bucket.key, bucket.capacity, bucket.rate, now)
            levels.append(level)
            if bucket.cost > bucket.capacity:
                return AdmitResult("too_large", index=i, levels=levels)
            if level < bucket.cost and (bucket.cost - level) / bucket.rate > wait:
                wait, failed = (bucket.cost - level) / bucket.rate, i
        if failed >= 0:
            return AdmitResult("bucket", index=failed, retry_after=wait, levels=levels)
        for i, slot in enumerate(reservation.slots):
            held = self._slots[slot.key]
            if len(held) >= slot.limit:
                _expire(held, now)
                if len(held) >= slot.limit:
                    return AdmitResult("slot", index=i, levels=levels)
        soft: list[int] = []
        for i, spend in enumerate(reservation.spends):
            spent, reserved = self._spend[spend.key]
            total = spent + reserved + reservation.est_cost
            if spend.limit is not None and total > spend.limit:
                return AdmitResult("budget", index=i, levels=levels)
            if spend.soft is not None and total >= spend.soft:
                soft.append(i)
        for i, bucket in enumerate(reservation.buckets):
            levels[i] -= bucket.cost
            self._buckets[bucket.key] = (levels[i], now)
        for slot in reservation.slots:
            self._slots[slot.key][reservation.entry_id] = now + reservation.lease_s
        for spend in reservation.spends:
            self._spend[spend.key][1] += reservation.est_cost
        self._open[reservation.entry_id] = (reservation, now + reservation.lease_s)
        return AdmitResult("ok", levels=levels, soft=soft, store=self.name)

    async def settle(self, settlement: Settlement) -> bool:
        r = settlement.reservation
        if self._open.pop(r.entry_id, None) is None:
            return False
        now = self._clock()
        refund = r.est_prompt + r.est_completion - settlement.tokens
        for bucket in r.buckets:
            if bucket.kind == "tokens" and refund:
                level = self._level(bucket.key, bucket.capacity, bucket.rate, now)
                self._buckets[bucket.key] = (min(bucket.capacity, level + refund), now)
        for slot in r.slots:
            self._slots[slot.key].pop(r.entry_id, None)
        for spend in r.spends:
            counters = self._spend[spend.key]
            counters[0] += settlement.cost
            counters[1] -= r.est_cost
        self._records[r.entry_id] = settlement.record()
        if len(self._records) > self._max_records:
            del self._records[next(iter(self._records))]  # dicts keep insertion order: the oldest
        day = self._aggregates[(r.tenant, r.day)]
        for name, value in settlement.aggregates().items():
            day[name] += value
        return True

    async def sweep(self, tenants: list[str]) -> int:
        now = self._clock()
        overdue = [r for r, deadline in self._open.values() if deadline <= now]
        settled = 0
        for reservation in overdue:
            settled += await self.settle(settle_at_estimate(reservation))
        old = now - self._retention_s
        for entry in [e for e, record in self._records.items() if record["ts"] < old]:
            del self._records[entry]
        return settled

    async def aggregates(self, tenant: str, days: list[str]) -> dict[str, dict[str, int]]:
        return {
            day: dict(self._aggregates[(tenant, day)]) for day in days if (tenant, day) in self._aggregates
        }

    async def records(self, tenant: str, start: float, end: float, limit: int) -> list[dict[str, Any]]:
        found = [r for r in self._records.values() if r["tenant"] == tenant and start <= r["ts"] < end]
        return sorted(found, key=lambda r: r["ts"])[:limit]

    async def spent(self, key: str) -> tuple[int, int]:
        spent, reserved = self._spend.get(key, (0, 0))
        return spent, reserved

    async def acquire(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        now = self._clock()
        held = self._slots[key]
        if len(held) >= limit:
            _expire(held, now)
            if len(held) >= limit:
                return False
        held[holder] = now + lease_s
        return True

    async def release(self, key: str, holder: str) -> None:
        self._slots[key].pop(holder, None)

    async def close(self) -> None:
        pass


def _expire(held: dict[str, float], now: float) -> None:
    """Drops leases past their expiry (their process died); only needed when the limit is reached."""
    for entry in [e for e, expiry in held.items() if expiry <= now]:
        del held[entry]
