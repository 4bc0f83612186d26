"""The store in Redis, shared by every gateway process and machine.

Admission and settlement are each one Lua script (one round trip, atomic). Every key of a tenant carries
the hash tag ``{t:TENANT}``, so a script's keys sit in one slot and work on Redis Cluster. Time is Redis's
own clock (``TIME``), one clock for all processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from .base import AdmitResult, Reservation, Settlement, settle_at_estimate

# A tenant's buckets live in one hash (fields BUCKET:v, BUCKET:t), its budget counters in another (SPEND:s,
# SPEND:r): few keys per call, because packing each key costs the client more than the script's work.
# KEYS: buckets hash, spend hash, record, pending, slots...
# ARGV: params {b: [[field, capacity, rate, cost]], s: [limit], p: [[field, limit, soft]], lease}, est, entry,
#       plan (params in one JSON argument for the same reason)
_ADMIT = """
local p = cjson.decode(ARGV[1])
local est, entry = tonumber(ARGV[2]), ARGV[3]
local nb, ns, nsp = #p.b, #p.s, #p.p
local buckets, spend, rec, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if redis.call('EXISTS', rec) == 1 then return 'dup' end
local levels = {}
local wait, failed = 0, 0
local fields = {}
for i = 1, nb do fields[2 * i - 1], fields[2 * i] = p.b[i][1] .. ':v', p.b[i][1] .. ':t' end
local h = nb > 0 and redis.call('HMGET', buckets, unpack(fields)) or {}
for i = 1, nb do
  local b = p.b[i]
  local cap, rate, cost = b[2], b[3], b[4]
  local v, at = tonumber(h[2 * i - 1]) or cap, tonumber(h[2 * i]) or now
  if now > at then v = v + (now - at) * rate end
  if v > cap then v = cap end
  levels[i] = v
  if cost > cap then return 'too_large ' .. i end
  if v < cost and (cost - v) / rate > wait then wait, failed = (cost - v) / rate, i end
end
if failed > 0 then
  local out = {'bucket', failed, tostring(wait)}
  for i = 1, nb do out[#out + 1] = tostring(levels[i]) end
  return table.concat(out, ' ')
end
for j = 1, ns do
  local key = KEYS[4 + j]
  if redis.call('ZCARD', key) >= p.s[j] then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= p.s[j] then return 'slot ' .. j end
  end
end
local soft = {}
local sfields = {}
for k = 1, nsp do sfields[2 * k - 1], sfields[2 * k] = p.p[k][1] .. ':s', p.p[k][1] .. ':r' end
local sh = nsp > 0 and redis.call('HMGET', spend, unpack(sfields)) or {}
for k = 1, nsp do
  local limit, softl = p.p[k][2], p.p[k][3]
  local total = (tonumber(sh[2 * k - 1]) or 0) + (tonumber(sh[2 * k]) or 0) + est
  if limit >= 0 and total > limit then return 'budget ' .. k end
  if softl >= 0 and total >= softl then soft[#soft + 1] = k end
end
local out = {'ok', 0, '0'}
local ttl = 0
local set, stamp = {}, tostring(now)
for i = 1, nb do
  local b = p.b[i]
  local v = levels[i] - b[4]
  local text = tostring(v)
  set[4 * i - 3], set[4 * i - 2], set[4 * i - 1], set[4 * i] = fields[2 * i - 1], text, fields[2 * i], stamp
  local full = math.ceil((b[2] - v) / b[3] * 1000) + 60000
  if full > ttl then ttl = full end
  out[#out + 1] = text
end
if nb > 0 then
  redis.call('HSET', buckets, unpack(set))
  if redis.call('PTTL', buckets) < ttl then redis.call('PEXPIRE', buckets, ttl) end
end
for j = 1, ns do
  redis.call('ZADD', KEYS[4 + j], now + p.lease, entry)
  redis.call('PEXPIRE', KEYS[4 + j], math.ceil(p.lease * 1000) + 60000)
end
for k = 1, nsp do redis.call('HINCRBY', spend, sfields[2 * k], ARGV[2]) end
redis.call('HSET', rec, 'state', 'reserved', 'plan', ARGV[4])
redis.call('ZADD', pending, now + p.lease, entry)
out[#out + 1] = 'soft'
for _, k in ipairs(soft) do out[#out + 1] = k end
return table.concat(out, ' ')
"""

# KEYS: record, pending, ledger, aggregates, buckets hash, spend hash, slots...
# ARGV: params {b: [[field, capacity, rate]], p: [field], retention, refund, agg: {name: "value"}}, entry, est,
#       cost, ts, record
_SETTLE = """
local p = cjson.decode(ARGV[1])
local entry = ARGV[2]
local rec, pending, ledger, agg, buckets, spend = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('HGET', rec, 'state') ~= 'reserved' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if p.refund ~= 0 then
  for i = 1, #p.b do
    local b = p.b[i]
    local cap, rate = b[2], b[3]
    local h = redis.call('HMGET', buckets, b[1] .. ':v', b[1] .. ':t')
    local v, at = tonumber(h[1]) or cap, tonumber(h[2]) or now
    if now > at then v = v + (now - at) * rate end
    v = v + p.refund
    if v > cap then v = cap end
    redis.call('HSET', buckets, b[1] .. ':v', tostring(v), b[1] .. ':t', tostring(now))
  end
end
for j = 7, #KEYS do redis.call('ZREM', KEYS[j], entry) end
for k = 1, #p.p do
  if ARGV[3] ~= '0' then redis.call('HINCRBY', spend, p.p[k] .. ':r', '-' .. ARGV[3]) end  -- '-0' is no integer
  redis.call('HINCRBY', spend, p.p[k] .. ':s', ARGV[4])
end
redis.call('HSET', rec, 'state', 'settled', 'record', ARGV[6])
redis.call('HDEL', rec, 'plan')
redis.call('EXPIRE', rec, p.retention)
redis.call('ZREM', pending, entry)
redis.call('ZADD', ledger, ARGV[5], entry)
for name, value in pairs(p.agg) do
  if value ~= '0' then redis.call('HINCRBY', agg, name, value) end
end
redis.call('EXPIRE', agg, p.retention)
return 1
"""

_RELEASE = "redis.call('ZREM', KEYS[1], ARGV[1])"

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 60000)
return 1
"""


def _past_period(field: str, now: float) -> bool:
    """A budget counter of a day or month that ended (``...:spend:d:2026-11-25:s``): kept a day longer."""
    _, _, rest = field.rpartition(":spend:")
    period, _, _ = rest.rpartition(":")
    kind, _, when = period.partition(":")
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(now - 86400))
    return (kind == "d" and when < yesterday) or (kind == "m" and when < yesterday[:7])


def tag(tenant: str) -> str:
    """The hash-tag part of every key of ``tenant`` (braces in a name would break the tag: escaped)."""
    return "{t:" + tenant.replace("{", "%7B").replace("}", "%7D") + "}"


def record_key(tenant: str, entry: str) -> str:
    return f"gw:{tag(tenant)}:r:{entry}"


class RedisStore:
    name = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.5, retention_days: int = 400,
                 max_connections: int = 64) -> None:
        # A blocking pool: a burst waits for a free connection instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout_s,
                                                        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                        decode_responses=True)
        self.client = aioredis.Redis(connection_pool=pool)
        self._retention_s = retention_days * 86400
        self._sha = {script: hashlib.sha1(script.encode()).hexdigest()
                     for script in (_ADMIT, _SETTLE, _ACQUIRE, _RELEASE)}
        self._batch: list[tuple[str, list[Any], list[Any], asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def _eval(self, script: str, keys: list[Any], args: list[Any]) -> Any:
        """Runs a script; every script called in the same turn of the event loop goes in one pipeline (one
        write, one read: under load, socket calls cost more than the scripts)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._batch.append((script, keys, args, future))
        if len(self._batch) == 1:
            loop.call_soon(self._flush_batch)
        return await future

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: list[tuple[str, list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._pipeline(batch)
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:  # a restarted Redis has forgotten the scripts: load them, run those again
                for script in {batch[i][0] for i in missing}:
                    await self.client.script_load(script)
                again = await self._pipeline([batch[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except BaseException as exc:  # the connection failed: every caller gets the error
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _pipeline(self, batch: list[tuple[str, list[Any], list[Any], asyncio.Future[Any]]]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in batch:
                pipe.evalsha(self._sha[script], len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def admit(self, reservation: Reservation) -> AdmitResult:
        r = reservation
        t = tag(r.tenant)
        keys = [f"gw:{t}:buckets", f"gw:{t}:spend", record_key(r.tenant, r.entry_id), f"gw:{t}:pending"]
        keys += [s.key for s in r.slots]
        params = {"b": [(b.key, b.capacity, b.rate, b.cost) for b in r.buckets], "s": [s.limit for s in r.slots],
                  "p": [(s.key, -1 if s.limit is None else s.limit, -1 if s.soft is None else s.soft)
                        for s in r.spends], "lease": r.lease_s}
        args: list[Any] = [orjson.dumps(params), r.est_cost, r.entry_id, orjson.dumps(r)]
        out = await self._eval(_ADMIT, keys, args)
        out = out.split(" ")  # one string: parsing a multi-bulk reply costs the client more
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
        keys = [record_key(r.tenant, r.entry_id), f"gw:{t}:pending", f"gw:{t}:ledger", f"gw:{t}:agg:{r.day}",
                f"gw:{t}:buckets", f"gw:{t}:spend", *(s.key for s in r.slots)]
        params = {"b": [(b.key, b.capacity, b.rate) for b in r.buckets if b.kind == "tokens"],
                  "p": [s.key for s in r.spends], "retention": self._retention_s,
                  "refund": r.est_prompt + r.est_completion - settlement.tokens,
                  "agg": {name: str(value) for name, value in settlement.aggregates().items()}}
        args: list[Any] = [orjson.dumps(params), r.entry_id, r.est_cost, settlement.cost, repr(r.ts),
                orjson.dumps(settlement.record())]
        return bool(await self._eval(_SETTLE, keys, args))

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
                settled += await self.settle(settle_at_estimate(Reservation.from_json(orjson.loads(plan))))
            await self.client.zremrangebyscore(f"gw:{t}:ledger", "-inf", now - self._retention_s)
            old = [f for f in map(str, await self.client.hkeys(f"gw:{t}:spend")) if _past_period(f, now)]
            if old:
                await self.client.hdel(f"gw:{t}:spend", *old)
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
        return [orjson.loads(r) for r in found if r is not None]

    async def spent(self, key: str) -> tuple[int, int]:
        tenant_tag = key[key.index("{"):key.index("}") + 1]
        spent, reserved = await self.client.hmget(f"gw:{tenant_tag}:spend", key + ":s", key + ":r")
        return int(spent or 0), int(reserved or 0)

    async def acquire(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        return bool(await self._eval(_ACQUIRE, [key], [limit, holder, lease_s]))

    async def release(self, key: str, holder: str) -> None:
        await self._eval(_RELEASE, [key], [holder])

    async def close(self) -> None:
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        await self.client.aclose()
