"""Where cached answers live, by exact key: process memory by default, Redis (through the process's store
layer) when ``stores.redis_url`` is set. Both expire entries after their TTL and evict past ``max_entries``
or ``max_bytes`` (least recently used in memory; in Redis per tenant, soonest to expire first); an answer over
``max_entry_bytes`` is not kept at all. The semantic index points at
entries here, so purge and eviction cover both caches."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Caps:
    max_entries: int
    max_bytes: int = 256 * 1024 * 1024
    max_entry_bytes: int = 4 * 1024 * 1024


ENTRY_OVERHEAD = 200  # bytes an entry costs beyond its key and value (dict slot, tuple, float, bytes header)


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD


class MemoryStore:
    def __init__(self, caps: Caps, clock: Callable[[], float] = time.time) -> None:
        self.caps = caps
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._drop(key)
        if len(value) > self.caps.max_entry_bytes:
            return
        self._entries[key] = (self._clock() + ttl_s, value)
        self.bytes += _cost(key, value)
        while len(self._entries) > self.caps.max_entries or self.bytes > self.caps.max_bytes:
            oldest, (_, old) = self._entries.popitem(last=False)
            self.bytes -= _cost(oldest, old)

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.bytes -= _cost(key, found[1])

    async def purge(self, tenant: str, alias: str | None = None) -> int:
        prefix = _prefix(tenant, alias)
        doomed = [k for k in self._entries if k.startswith(prefix)]
        for key in doomed:
            self._drop(key)
        return len(doomed)


# KEYS[1] the entry, KEYS[2] its tenant's index (score: when the entry expires), KEYS[3] its tenant's sizes
# (entry -> bytes, and "~total"); one hash tag: one cluster slot.
# ARGV: value, ttl ms, now ms, max entries, max bytes
_FORGET = """
local function forget(sizes, entry)
  local size = tonumber(redis.call('HGET', sizes, entry) or '0')
  if size > 0 then
    redis.call('HDEL', sizes, entry)
    redis.call('HINCRBY', sizes, '~total', -size)
  end
end
"""
_SET = (
    _FORGET
    + """
forget(KEYS[3], KEYS[1])
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])) do forget(KEYS[3], entry) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3] + ARGV[2], KEYS[1])
local size = string.len(ARGV[1]) + string.len(KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
local total = redis.call('HINCRBY', KEYS[3], '~total', size)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
while excess > 0 or total > tonumber(ARGV[5]) do
  local evicted = redis.call('ZPOPMIN', KEYS[2], 1)
  if #evicted == 0 then break end
  redis.call('DEL', evicted[1])
  forget(KEYS[3], evicted[1])
  total = tonumber(redis.call('HGET', KEYS[3], '~total') or '0')
  excess = excess - 1
end
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  if redis.call('PTTL', key) < tonumber(ARGV[2]) then redis.call('PEXPIRE', key, ARGV[2]) end
end
return 0
"""
)
# KEYS[1] the tenant's index, KEYS[2] its sizes, KEYS[3...] the entries to drop
_PURGE = (
    _FORGET
    + """
local removed = 0
for i = 3, #KEYS do
  removed = removed + redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[1], KEYS[i])
  forget(KEYS[2], KEYS[i])
end
return removed
"""
)
_PURGE_BATCH = 500


class RedisStore:
    """Entries shared by every gateway process: ``<prefix>{c:tenant}:alias:hash`` with a TTL, and per tenant
    a sorted set of them by expiry time that keeps the tenant's count under ``max_entries`` and lists them for
    purging (no SCAN: on Redis Cluster a tenant's entries and index sit in one slot), and a hash of their sizes
    that keeps the tenant's bytes under ``max_bytes``. When Redis is away the
    layer's policy applies: fail open, answers are kept in this process's memory meanwhile; fail closed, a
    lookup is refused with 503."""

    def __init__(
        self, layer: StoreLayer, caps: Caps, prefix: str = "gw:cache:", clock: Callable[[], float] = time.time
    ) -> None:
        self._layer = layer
        self.caps = caps
        self.prefix = prefix
        self._clock = clock
        self.fallback = MemoryStore(caps, clock)

    def _keys(self, key: str) -> tuple[str, str, str]:
        """The Redis key of an entry (``tenant:alias:digest``, tenant escaped), its tenant's index and sizes."""
        tenant, _, rest = key.partition(":")
        tagged = f"{self.prefix}{{c:{tenant}}}:"
        return tagged + rest, tagged + "~index", tagged + "~sizes"

    async def get(self, key: str) -> bytes | None:
        return await self._layer.health.call(
            "cache_get", lambda: self._get(key), lambda: self.fallback.get(key), decides=True
        )

    async def _get(self, key: str) -> bytes | None:
        entry, index, _ = self._keys(key)
        # Redis drops an entry at its TTL on Redis's clock; the index holds when it expires on the gateway's
        # (the clock the policies read), which decides: both stores then expire an entry at the same moment.
        async with self._layer.redis.pipeline(transaction=False) as pipe:
            pipe.get(entry)
            pipe.zscore(index, entry)
            value, expires_ms = await pipe.execute()
        if expires_ms is not None and float(expires_ms) <= self._clock() * 1000:
            return None
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._layer.health.call(
            "cache_set",
            lambda: self._set(key, value, ttl_s),
            lambda: self.fallback.set(key, value, ttl_s),
            decides=False,
        )

    async def _set(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.caps.max_entry_bytes:
            return
        ttl_ms = max(int(ttl_s * 1000), 1)
        await self._layer.script(
            _SET,
            self._keys(key),
            [value, ttl_ms, int(self._clock() * 1000), self.caps.max_entries, self.caps.max_bytes],
        )

    async def purge(self, tenant: str, alias: str | None = None) -> int:
        local = await self.fallback.purge(tenant, alias)
        return local + await self._layer.health.call(
            "cache_purge", lambda: self._purge(tenant, alias), _nothing, decides=True
        )

    async def _purge(self, tenant: str, alias: str | None) -> int:
        entry, index, sizes = self._keys(_prefix(tenant, alias))
        members = [str(m) for m in await self._layer.redis.zrange(index, 0, -1)]
        doomed = [m for m in members if m.startswith(entry)]
        removed = 0
        for i in range(0, len(doomed), _PURGE_BATCH):
            removed += int(
                await self._layer.script(_PURGE, [index, sizes, *doomed[i : i + _PURGE_BATCH]], [])
            )
        return removed


async def _nothing() -> int:
    return 0
