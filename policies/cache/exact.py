"""Where cached answers live, by exact key: process memory by default, Redis when ``stores.redis`` is set.
Both expire entries after their TTL and evict past ``max_entries`` (least recently used in memory; soonest to
expire in Redis). The semantic index points at entries here, so purge and eviction cover both caches."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol
from urllib.parse import quote


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
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= time.time():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (time.time() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def purge(self, tenant: str, alias: str | None = None) -> int:
        prefix = _prefix(tenant, alias)
        doomed = [k for k in self._entries if k.startswith(prefix)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)


# KEYS[1] the entry, KEYS[2] the index (score: when the entry expires); ARGV: value, ttl ms, now ms, max entries
_SET = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3] + ARGV[2], KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local evicted = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #evicted, 2 do redis.call('DEL', evicted[i]) end
end
return 0
"""


class RedisStore:
    """Entries shared by every gateway process: ``<prefix>tenant:alias:hash`` with a TTL, and a sorted set
    of them by expiry time that keeps the count under ``max_entries``."""

    def __init__(self, redis: Any, max_entries: int, prefix: str = "gw:cache:") -> None:
        self.redis = redis
        self.max_entries = max_entries
        self.prefix = prefix
        self._index = prefix + "~index"
        self._set = redis.register_script(_SET)

    async def get(self, key: str) -> bytes | None:
        value = await self.redis.get(self.prefix + key)
        return value if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        now_ms = int(time.time() * 1000)
        await self._set(keys=[self.prefix + key, self._index],
                        args=[value, max(int(ttl_s * 1000), 1), now_ms, self.max_entries])

    async def purge(self, tenant: str, alias: str | None = None) -> int:
        pattern = self.prefix + _prefix(tenant, alias) + "*"
        removed = 0
        async for batch in _batches(self.redis.scan_iter(match=pattern, count=500), 500):
            removed += int(await self.redis.delete(*batch))
            await self.redis.zrem(self._index, *batch)
        return removed


async def _batches(items: Any, size: int) -> Any:
    batch: list[Any] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
