"""The store in Redis, shared by every gateway process and machine.

Admission and settlement are each one Lua script (one round trip, atomic). Every key of a tenant carries
the hash tag ``{t:TENANT}``, so a script's keys sit in one slot and work on Redis Cluster. Time is Redis's
own clock (``TIME``), one clock for all processes.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from .base import AdmitResult, Reservation, Settlement, settle_at_estimate

_ADMIT = """
local nb, ns, nsp = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local est, lease, entry = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local rec, pending = KEYS[nb + ns + nsp + 1], KEYS[nb + ns + nsp + 2]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if redis.call('EXISTS', rec) == 1 then return {'dup'} end
local levels, a = {}, 8
local wait, failed = 0, 0
for i = 1, nb do
  local cap, rate, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local h = redis.call('HMGET', KEYS[i], 'v', 't')
  local v, at = tonumber(h[1]) or cap, tonumber(h[2]) or now
  if now > at then v = v + (now - at) * rate end
  if v > cap then v = cap end
  levels[i] = v
  if cost > cap then return {'too_large', i} end
  if v < cost and (cost - v) / rate > wait then wait, failed = (cost - v) / rate, i end
end
if failed > 0 then
  local out = {'bucket', failed, tostring(wait)}
  for i = 1, nb do out[#out + 1] = tostring(levels[i]) end
  return out
end
for j = 1, ns do
  local key, limit = KEYS[nb + j], tonumber(ARGV[a])
  a = a + 1
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= limit then return {'slot', j} end
end
local soft = {}
for k = 1, nsp do
  local key, limit, softl = KEYS[nb + ns + k], tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local h = redis.call('HMGET', key, 's', 'r')
  local total = (tonumber(h[1]) or 0) + (tonumber(h[2]) or 0) + est
  if limit >= 0 and total > limit then return {'budget', k} end
  if softl >= 0 and total >= softl then soft[#soft + 1] = k end
end
local out = {'ok', 0, '0'}
a = 8
for i = 1, nb do
  local cap, rate, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local v = levels[i] - cost
  redis.call('HSET', KEYS[i], 'v', tostring(v), 't', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - v) / rate * 1000) + 60000)
  out[#out + 1] = tostring(v)
end
for j = 1, ns do
  redis.call('ZADD', KEYS[nb + j], now + lease, entry)
  redis.call('PEXPIRE', KEYS[nb + j], math.ceil(lease * 1000) + 60000)
end
a = a + ns
for k = 1, nsp do
  redis.call('HINCRBY', KEYS[nb + ns + k], 'r', est)
  redis.call('EXPIRE', KEYS[nb + ns + k], tonumber(ARGV[a + 2 * nsp + k - 1]))
end
redis.call('HSET', rec, 'state', 'reserved', 'plan', ARGV[7])
redis.call('ZADD', pending, now + lease, entry)
out[#out + 1] = 'soft'
for _, k in ipairs(soft) do out[#out + 1] = k end
return out
"""

# KEYS: rec, pending, ledger, aggregates, token buckets..., slots..., spends...
# ARGV: entry, nb, ns, nsp, retention_s, record json, ts, refund, est, cost, n_agg, agg pairs..., caps/rates...
_SETTLE = """
local entry, nb, ns, nsp = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local retention, ts, refund = tonumber(ARGV[5]), ARGV[7], tonumber(ARGV[8])
local est, cost, nagg = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local rec, pending, ledger, agg = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HGET', rec, 'state') ~= 'reserved' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local a = 12 + 2 * nagg
for i = 1, nb do
  local cap, rate = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  if refund ~= 0 then
    local h = redis.call('HMGET', KEYS[4 + i], 'v', 't')
    local v, at = tonumber(h[1]) or cap, tonumber(h[2]) or now
    if now > at then v = v + (now - at) * rate end
    v = v + refund
    if v > cap then v = cap end
    redis.call('HSET', KEYS[4 + i], 'v', tostring(v), 't', tostring(now))
    redis.call('PEXPIRE', KEYS[4 + i], math.ceil((cap - v) / rate * 1000) + 60000)
  end
end
for j = 1, ns do redis.call('ZREM', KEYS[4 + nb + j], entry) end
for k = 1, nsp do
  local key = KEYS[4 + nb + ns + k]
  redis.call('HINCRBY', key, 'r', -est)
  redis.call('HINCRBY', key, 's', cost)
end
redis.call('HSET', rec, 'state', 'settled', 'record', ARGV[6])
redis.call('HDEL', rec, 'plan')
redis.call('EXPIRE', rec, retention)
redis.call('ZREM', pending, entry)
redis.call('ZADD', ledger, ts, entry)
for i = 0, nagg - 1 do
  redis.call('HINCRBY', agg, ARGV[12 + 2 * i], ARGV[13 + 2 * i])
end
redis.call('EXPIRE', agg, retention)
return 1
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 60000)
return 1
"""


def tag(tenant: str) -> str:
    """The hash-tag part of every key of ``tenant`` (braces in a name would break the tag: escaped)."""
    return "{t:" + tenant.replace("{", "%7B").replace("}", "%7D") + "}"


def record_key(tenant: str, entry: str) -> str:
    return f"gw:{tag(tenant)}:r:{entry}"


class RedisStore:
    name = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.5, retention_days: int = 400) -> None:
        self.client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                        decode_responses=True, health_check_interval=0)
        self._admit = self.client.register_script(_ADMIT)
        self._settle = self.client.register_script(_SETTLE)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._retention_s = retention_days * 86400

    async def admit(self, reservation: Reservation) -> AdmitResult:
        r = reservation
        t = tag(r.tenant)
        keys = [b.key for b in r.buckets] + [s.key for s in r.slots] + [s.key for s in r.spends]
        keys += [record_key(r.tenant, r.entry_id), f"gw:{t}:pending"]
        args: list[Any] = [len(r.buckets), len(r.slots), len(r.spends), r.est_cost, r.lease_s, r.entry_id,
                           json.dumps(r.to_json(), separators=(",", ":"))]
        for b in r.buckets:
            args += [repr(b.capacity), repr(b.rate), repr(b.cost)]
        args += [s.limit for s in r.slots]
        for s in r.spends:
            args += [-1 if s.limit is None else s.limit, -1 if s.soft is None else s.soft]
        args += [s.ttl_s for s in r.spends]
        out = await self._admit(keys=keys, args=args)
        outcome = out[0]
        if outcome == "ok":
            split = out.index("soft")
            return AdmitResult("ok", levels=[float(v) for v in out[3:split]],
                               soft=[int(k) - 1 for k in out[split + 1:]], store=self.name)
        if outcome == "bucket":
            return AdmitResult("bucket", index=int(out[1]) - 1, retry_after=float(out[2]),
                               levels=[float(v) for v in out[3:]], store=self.name)
        if outcome == "dup":
            return AdmitResult("dup", store=self.name)
        return AdmitResult(outcome, index=int(out[1]) - 1, store=self.name)

    async def settle(self, settlement: Settlement) -> bool:
        r = settlement.reservation
        t = tag(r.tenant)
        tokens = [b for b in r.buckets if b.kind == "tokens"]
        keys = [record_key(r.tenant, r.entry_id), f"gw:{t}:pending", f"gw:{t}:ledger", f"gw:{t}:agg:{r.day}"]
        keys += [b.key for b in tokens] + [s.key for s in r.slots] + [s.key for s in r.spends]
        aggregates = settlement.aggregates()
        args: list[Any] = [r.entry_id, len(tokens), len(r.slots), len(r.spends), self._retention_s,
                           json.dumps(settlement.record(), separators=(",", ":")), repr(r.ts),
                           r.est_prompt + r.est_completion - settlement.tokens, r.est_cost, settlement.cost,
                           len(aggregates)]
        for name, value in aggregates.items():
            args += [name, value]
        for b in tokens:
            args += [repr(b.capacity), repr(b.rate)]
        return bool(await self._settle(keys=keys, args=args))

    async def sweep(self, tenants: list[str]) -> int:
        settled = 0
        now = await self._now()
        for tenant in tenants:
            t = tag(tenant)
            overdue = await self.client.zrangebyscore(f"gw:{t}:pending", "-inf", now, start=0, num=1000)
            for entry in map(str, overdue):
                plan = await self.client.hget(record_key(tenant, entry), "plan")
                if plan is None:
                    await self.client.zrem(f"gw:{t}:pending", entry)
                    continue
                settled += await self.settle(settle_at_estimate(Reservation.from_json(json.loads(plan))))
            await self.client.zremrangebyscore(f"gw:{t}:ledger", "-inf", now - self._retention_s)
        return settled

    async def _now(self) -> float:
        seconds, micros = await self.client.time()
        return float(seconds) + micros / 1e6

    async def aggregates(self, tenant: str, days: list[str]) -> dict[str, dict[str, int]]:
        async with self.client.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(f"gw:{tag(tenant)}:agg:{day}")
            found = await pipe.execute()
        return {day: {k: int(v) for k, v in data.items()} for day, data in zip(days, found, strict=True) if data}

    async def records(self, tenant: str, start: float, end: float, limit: int) -> list[dict[str, Any]]:
        t = tag(tenant)
        entries = await self.client.zrangebyscore(f"gw:{t}:ledger", start, f"({end}", start=0, num=limit)
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in map(str, entries):
                pipe.hget(record_key(tenant, entry), "record")
            found = await pipe.execute()
        return [json.loads(r) for r in found if r is not None]

    async def spent(self, key: str) -> tuple[int, int]:
        spent, reserved = await self.client.hmget(key, "s", "r")
        return int(spent or 0), int(reserved or 0)

    async def acquire(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        return bool(await self._acquire(keys=[key], args=[limit, holder, lease_s]))

    async def release(self, key: str, holder: str) -> None:
        await self.client.zrem(key, holder)

    async def close(self) -> None:
        await self.client.aclose()
