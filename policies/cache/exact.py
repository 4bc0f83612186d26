"""Where cached answers live, by exact key: process memory by default, Redis (through the process's store
layer) when ``stores.redis_url`` is set. Both expire entries after their TTL and evict past ``max_entries``
(least recently used in memory; in Redis per tenant, soonest to expire first). The semantic index points at
entries here, so purge and eviction cover both caches."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

from ..stores.layer import StoreLayer


class AnswerStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def purge(self, tenant: str, alias: str | None = None) -> int: ...


def entry_key(tenant: str, alias: str, digest: str) -> str:
    """``tenant:alias:digest`` with tenant and alias escaped, so purging by prefix never matches another."""
    return f"{quote(tenant, safe='')}:{quote(alias, safe='')}:{digest}"


def _prefix(tenant: str, alias: str | None) -> str:
    return f"{quote(tenant, safe='')}:" + ("" if alias is None else f"{quote(alias, safe='')}:")


class MemoryStore:
    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (self._clock() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def purge(self, tenant: str, alias: str | None = None) -> int:
        prefix = _prefix(tenant, alias)
        doomed = [k for k in self._entries if k.startswith(prefix)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)


# KEYS[1] the entry, KEYS[2] its tenant's index (score: when the entry expires), one hash tag: one cluster slot.
# ARGV: value, ttl ms, now ms, max entries
_SET = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3] + ARGV[2], KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local evicted = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #evicted, 2 do redis.call('DEL', evicted[i]) end
end
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 0
"""
_PURGE_BATCH = 500


class RedisStore:
    """Entries shared by every gateway process: ``<prefix>{c:tenant}:alias:hash`` with a TTL, and per tenant
    a sorted set of them by expiry time that keeps the tenant's count under ``max_entries`` and lists them for
    purging (no SCAN: on Redis Cluster a tenant's entries and index sit in one slot). When Redis is away the
    layer's policy applies: fail open, answers are kept in this process's memory meanwhile; fail closed, a
    lookup is refused with 503."""

    def __init__(self, layer: StoreLayer, max_entries: int, prefix: str = "gw:cache:",
                 clock: Callable[[], float] = time.time) -> None:
        self._layer = layer
        self.max_entries = max_entries
        self.prefix = prefix
        self._clock = clock
        self.fallback = MemoryStore(max_entries, clock)

    def _keys(self, key: str) -> tuple[str, str]:
        """The Redis key of an entry (``tenant:alias:digest``, tenant escaped) and its tenant's index."""
        tenant, _, rest = key.partition(":")
        tagged = f"{self.prefix}{{c:{tenant}}}:"
        return tagged + rest, tagged + "~index"

    async def get(self, key: str) -> bytes | None:
        return await self._layer.health.call("cache_get", lambda: self._get(key), lambda: self.fallback.get(key),
                                             decides=True)

    async def _get(self, key: str) -> bytes | None:
        value = await self._layer.redis.get(self._keys(key)[0])
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._layer.health.call("cache_set", lambda: self._set(key, value, ttl_s),
                                      lambda: self.fallback.set(key, value, ttl_s), decides=False)

    async def _set(self, key: str, value: bytes, ttl_s: float) -> None:
        ttl_ms = max(int(ttl_s * 1000), 1)
        await self._layer.script(_SET, self._keys(key), [value, ttl_ms, int(self._clock() * 1000), self.max_entries])

    async def purge(self, tenant: str, alias: str | None = None) -> int:
        local = await self.fallback.purge(tenant, alias)
        return local + await self._layer.health.call("cache_purge", lambda: self._purge(tenant, alias),
                                                     _nothing, decides=True)

    async def _purge(self, tenant: str, alias: str | None) -> int:
        entry, index = self._keys(_prefix(tenant, alias))
        redis = self._layer.redis
        members = [str(m) for m in await redis.zrange(index, 0, -1)]
        doomed = [m for m in members if m.startswith(entry)]
        removed = 0
        for i in range(0, len(doomed), _PURGE_BATCH):
            batch = doomed[i:i + _PURGE_BATCH]
            removed += int(await redis.delete(*batch))
            await redis.zrem(index, *batch)
        return removed


async def _nothing() -> int:
    return 0
