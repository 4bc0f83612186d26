"""The generic part of the store layer: strings, hashes and append-only lists with TTLs, for state that needs
no atomic script of its own (stored responses, batch and job state, variant history, an audit log).

Three implementations behind one interface: ``MemoryKeyValue`` (one process), ``RedisKeyValue`` (shared; one
command or one single-key pipeline per call, so it works on Redis Cluster as it is) and ``FailoverKeyValue``
(Redis with the layer's fail-open / fail-closed policy, memory as the fallback). Values are ``str``: callers
encode (orjson) what they keep. A key that should live in one cluster slot with others carries a hash tag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .health import StoreHealth


class KeyValue(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def get_many(self, keys: list[str]) -> list[str | None]:
        """Each key's value, in order, in one round trip."""
        ...

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    async def delete(self, *keys: str) -> int: ...

    async def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        """Sets ``key`` only where it is absent (or expired): True for the one caller that set it (a lease)."""
        ...

    async def hash_get(self, key: str) -> dict[str, str]:
        """Every field of a hash ({} when there is none)."""
        ...

    async def hash_set(self, key: str, fields: Mapping[str, str], ttl_s: float | None = None) -> None: ...

    async def hash_incr(self, key: str, field: str, by: int = 1) -> int: ...

    async def hash_delete(self, key: str, *fields: str) -> int:
        """Removes fields of a hash; returns how many were there."""
        ...

    async def append(
        self, key: str, value: str, *, max_len: int | None = None, ttl_s: float | None = None
    ) -> int:
        """Adds to the end of a list (keeping its newest ``max_len``); returns its length."""
        ...

    async def items(self, key: str, start: int = 0, stop: int = -1) -> list[str]:
        """A list's items from ``start`` to ``stop`` inclusive (negative: from the end)."""
        ...

    def require_reachable(self) -> None:
        """Raises 503 (``Retry-After``) where a read's "nothing there" proves nothing: while Redis is away
        (fail open), reads are answered from this process's memory, which lacks what another process (or this
        one, before the outage) wrote, so a lookup that found nothing should be retried, not given up (404),
        and a listing would be partial. Returns where an absence is an answer."""
        ...


class MemoryKeyValue:
    """Every call runs without awaiting: atomic on one event loop. Expired keys go when next touched, and
    every ``PURGE_EVERY`` expiring writes all expired keys go (keys written once and never read again, such
    as stored responses nobody continued, would otherwise stay)."""

    PURGE_EVERY = 1024

    def require_reachable(self) -> None:
        pass

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, Any] = {}
        self._expiry: dict[str, float] = {}
        self._expiring_writes = 0

    def _live(self, key: str) -> Any:
        expiry = self._expiry.get(key)
        if expiry is not None and expiry <= self._clock():
            del self._expiry[key]
            self._data.pop(key, None)
        return self._data.get(key)

    def _ttl(self, key: str, ttl_s: float | None) -> None:
        if ttl_s is not None:
            now = self._clock()
            self._expiry[key] = now + ttl_s
            self._expiring_writes += 1
            if self._expiring_writes % self.PURGE_EVERY == 0:
                for gone in [k for k, at in self._expiry.items() if at <= now]:
                    del self._expiry[gone]
                    self._data.pop(gone, None)

    async def get(self, key: str) -> str | None:
        value = self._live(key)
        return value if isinstance(value, str) else None

    async def get_many(self, keys: list[str]) -> list[str | None]:
        return [await self.get(key) for key in keys]

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self._data[key] = value
        self._expiry.pop(key, None)
        self._ttl(key, ttl_s)

    async def delete(self, *keys: str) -> int:
        removed = sum(self._live(key) is not None for key in keys)
        for key in keys:
            self._data.pop(key, None)
            self._expiry.pop(key, None)
        return removed

    async def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        if self._live(key) is not None:
            return False
        await self.set(key, value, ttl_s)
        return True

    async def hash_get(self, key: str) -> dict[str, str]:
        value = self._live(key)
        return dict(value) if isinstance(value, dict) else {}

    async def hash_set(self, key: str, fields: Mapping[str, str], ttl_s: float | None = None) -> None:
        value = self._live(key)
        if not isinstance(value, dict):
            value = self._data[key] = {}
        value.update(fields)
        self._ttl(key, ttl_s)

    async def hash_incr(self, key: str, field: str, by: int = 1) -> int:
        value = self._live(key)
        if not isinstance(value, dict):
            value = self._data[key] = {}
        total = int(value.get(field, 0)) + by
        value[field] = str(total)
        return total

    async def hash_delete(self, key: str, *fields: str) -> int:
        value = self._live(key)
        if not isinstance(value, dict):
            return 0
        return sum(value.pop(f, None) is not None for f in fields)

    async def append(
        self, key: str, value: str, *, max_len: int | None = None, ttl_s: float | None = None
    ) -> int:
        found = self._live(key)
        if not isinstance(found, list):
            found = self._data[key] = []
        found.append(value)
        if max_len is not None and len(found) > max_len:
            del found[: len(found) - max_len]
        self._ttl(key, ttl_s)
        return len(found)

    async def items(self, key: str, start: int = 0, stop: int = -1) -> list[str]:
        found = self._live(key)
        if not isinstance(found, list):
            return []
        end = len(found) + stop + 1 if stop < 0 else stop + 1
        return list(found[start if start >= 0 else max(0, len(found) + start) : max(0, end)])


class RedisKeyValue:
    def require_reachable(self) -> None:
        pass

    def __init__(self, client: Callable[[], Any]) -> None:
        self._client = client  # the layer's client, read at each call (it is opened after this is built)

    async def get(self, key: str) -> str | None:
        value = await self._client().get(key)
        return None if value is None else str(value)

    async def get_many(self, keys: list[str]) -> list[str | None]:
        async with self._client().pipeline(transaction=False) as pipe:  # a cluster client splits it by node
            for key in keys:
                pipe.get(key)
            found = await pipe.execute()
        return [None if value is None else str(value) for value in found]

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        await self._client().set(key, value, px=None if ttl_s is None else max(1, int(ttl_s * 1000)))

    async def delete(self, *keys: str) -> int:
        return int(await self._client().delete(*keys)) if keys else 0

    async def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        return bool(await self._client().set(key, value, nx=True, px=max(1, int(ttl_s * 1000))))

    async def hash_get(self, key: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in (await self._client().hgetall(key)).items()}

    async def hash_set(self, key: str, fields: Mapping[str, str], ttl_s: float | None = None) -> None:
        async with self._client().pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=dict(fields))
            if ttl_s is not None:
                pipe.pexpire(key, max(1, int(ttl_s * 1000)))
            await pipe.execute()

    async def hash_incr(self, key: str, field: str, by: int = 1) -> int:
        return int(await self._client().hincrby(key, field, by))

    async def hash_delete(self, key: str, *fields: str) -> int:
        return int(await self._client().hdel(key, *fields)) if fields else 0

    async def append(
        self, key: str, value: str, *, max_len: int | None = None, ttl_s: float | None = None
    ) -> int:
        async with self._client().pipeline(transaction=False) as pipe:
            pipe.rpush(key, value)
            if max_len is not None:
                pipe.ltrim(key, -max_len, -1)
            if ttl_s is not None:
                pipe.pexpire(key, max(1, int(ttl_s * 1000)))
            length, *_ = await pipe.execute()
        return min(int(length), max_len) if max_len is not None else int(length)

    async def items(self, key: str, start: int = 0, stop: int = -1) -> list[str]:
        return [str(v) for v in await self._client().lrange(key, start, stop)]


class FailoverKeyValue:
    """Redis, under the layer's failure policy. Reads decide (fail closed: 503); writes are bookkeeping."""

    def __init__(self, redis: RedisKeyValue, memory: MemoryKeyValue, health: StoreHealth) -> None:
        self.redis, self.memory, self._health = redis, memory, health

    def require_reachable(self) -> None:
        if self._health.degraded:
            raise self._health.refusal()

    async def get(self, key: str) -> str | None:
        return await self._health.call(
            "kv.get", lambda: self.redis.get(key), lambda: self.memory.get(key), decides=True
        )

    async def get_many(self, keys: list[str]) -> list[str | None]:
        return await self._health.call(
            "kv.get_many", lambda: self.redis.get_many(keys), lambda: self.memory.get_many(keys), decides=True
        )

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        await self._health.call(
            "kv.set",
            lambda: self.redis.set(key, value, ttl_s),
            lambda: self.memory.set(key, value, ttl_s),
            decides=False,
        )

    async def delete(self, *keys: str) -> int:
        return await self._health.call(
            "kv.delete", lambda: self.redis.delete(*keys), lambda: self.memory.delete(*keys), decides=False
        )

    async def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        return await self._health.call(
            "kv.set_if_absent",
            lambda: self.redis.set_if_absent(key, value, ttl_s),
            lambda: self.memory.set_if_absent(key, value, ttl_s),
            decides=True,
        )

    async def hash_get(self, key: str) -> dict[str, str]:
        return await self._health.call(
            "kv.hash_get", lambda: self.redis.hash_get(key), lambda: self.memory.hash_get(key), decides=True
        )

    async def hash_set(self, key: str, fields: Mapping[str, str], ttl_s: float | None = None) -> None:
        await self._health.call(
            "kv.hash_set",
            lambda: self.redis.hash_set(key, fields, ttl_s),
            lambda: self.memory.hash_set(key, fields, ttl_s),
            decides=False,
        )

    async def hash_incr(self, key: str, field: str, by: int = 1) -> int:
        return await self._health.call(
            "kv.hash_incr",
            lambda: self.redis.hash_incr(key, field, by),
            lambda: self.memory.hash_incr(key, field, by),
            decides=False,
        )

    async def hash_delete(self, key: str, *fields: str) -> int:
        return await self._health.call(
            "kv.hash_delete",
            lambda: self.redis.hash_delete(key, *fields),
            lambda: self.memory.hash_delete(key, *fields),
            decides=False,
        )

    async def append(
        self, key: str, value: str, *, max_len: int | None = None, ttl_s: float | None = None
    ) -> int:
        return await self._health.call(
            "kv.append",
            lambda: self.redis.append(key, value, max_len=max_len, ttl_s=ttl_s),
            lambda: self.memory.append(key, value, max_len=max_len, ttl_s=ttl_s),
            decides=False,
        )

    async def items(self, key: str, start: int = 0, stop: int = -1) -> list[str]:
        return await self._health.call(
            "kv.items",
            lambda: self.redis.items(key, start, stop),
            lambda: self.memory.items(key, start, stop),
            decides=True,
        )
