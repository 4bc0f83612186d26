"""The store in Redis, shared by every gateway process and machine.

Admission and settlement are each one Lua script (one round trip, atomic), and each script call serves a
batch: the requests of one tenant that arrived together, decided and settled one after the other. Every
key of a tenant carries the hash tag ``{t:TENANT}``, so a script's keys sit in one slot and work on Redis
Cluster. Time is Redis's own clock (``TIME``), one clock for all processes.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import NoScriptError

from ..clock import SYSTEM, Clock, utc_day
from .base import AdmitResult, Reservation, Settlement, settle_at_estimate
from .layer import StoreLayer

# KEYS: buckets hash, spend hash, pending, then every record and slot key of the batch (declared for Cluster).
# ARGV[1]: {B: [[bucket field, capacity, rate]], P: [[spend field, limit, soft]], i: [{r: record key, e: entry,
#           o: attempt (an entry admitted by this same attempt answers 'again'), b: [[index in B, cost]], s: [[slot key, limit]], p: [index in P], est, l: lease}]} in the order the
#           requests came (a batch's buckets and spends are named once); ARGV[1 + n]: request n's plan.
# The requests are admitted one after the other, exactly as separate scripts at the same instant would admit
# them, but the tenant's two hashes are read once and written once for the whole batch.
_ADMIT = """
local batch = cjson.decode(ARGV[1])
local B, P = batch.B, batch.P
local buckets, spend, pending = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local stamp = tostring(now)
local level, at, spent, reserved, fields = {}, {}, {}, {}, {}
if #B > 0 then
  for i, b in ipairs(B) do fields[2 * i - 1], fields[2 * i] = b[1] .. ':v', b[1] .. ':t' end
  local h = redis.call('HMGET', buckets, unpack(fields))
  for i = 1, #B do level[i], at[i] = tonumber(h[2 * i - 1]) or false, tonumber(h[2 * i]) or now end
end
if #P > 0 then
  local sfields = {}
  for i, s in ipairs(P) do sfields[2 * i - 1], sfields[2 * i] = s[1] .. ':s', s[1] .. ':r' end
  local h = redis.call('HMGET', spend, unpack(sfields))
  for i = 1, #P do spent[i], reserved[i] = tonumber(h[2 * i - 1]) or 0, tonumber(h[2 * i]) or 0 end
end
local dirty, added, leases, pend = {}, {}, {}, {}
local function admit(idx, it)
  if redis.call('EXISTS', it.r) == 1 then
    if redis.call('HGET', it.r, 'attempt') == it.o then return 'again' end
    return 'dup'
  end
  local nb = #it.b
  local levels = {}
  local wait, failed = 0, 0
  for i = 1, nb do
    local bi, cost = it.b[i][1], it.b[i][2]
    local cap, rate = B[bi][2], B[bi][3]
    local v, a = level[bi] or cap, at[bi]
    if now > a then v = v + (now - a) * rate end
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
  for j, s in ipairs(it.s) do
    if redis.call('ZCARD', s[1]) >= s[2] then
      redis.call('ZREMRANGEBYSCORE', s[1], '-inf', now)
      if redis.call('ZCARD', s[1]) >= s[2] then return 'slot ' .. j end
    end
  end
  local soft = {}
  for k, pi in ipairs(it.p) do
    local total = spent[pi] + reserved[pi] + it.est
    if P[pi][2] >= 0 and total > P[pi][2] then return 'budget ' .. k end
    if P[pi][3] >= 0 and total >= P[pi][3] then soft[#soft + 1] = k end
  end
  local out = {'ok', 0, '0'}
  for i = 1, nb do
    local bi = it.b[i][1]
    local text = tostring(levels[i] - it.b[i][2])
    level[bi], at[bi], dirty[bi] = tonumber(text), now, text
    out[#out + 1] = text
  end
  for _, s in ipairs(it.s) do
    redis.call('ZADD', s[1], now + it.l, it.e)
    if (leases[s[1]] or 0) < it.l then leases[s[1]] = it.l end
  end
  for _, pi in ipairs(it.p) do
    reserved[pi] = reserved[pi] + it.est
    added[pi] = (added[pi] or 0) + it.est
  end
  redis.call('HSET', it.r, 'state', 'reserved', 'plan', ARGV[1 + idx], 'attempt', it.o)
  pend[#pend + 1], pend[#pend + 2] = now + it.l, it.e
  out[#out + 1] = 'soft'
  for _, k in ipairs(soft) do out[#out + 1] = k end
  return table.concat(out, ' ')
end
local results = {}
for idx, it in ipairs(batch.i) do results[idx] = admit(idx, it) end
local set, ttl = {}, 0
for bi, text in pairs(dirty) do
  local n = #set
  set[n + 1], set[n + 2], set[n + 3], set[n + 4] = fields[2 * bi - 1], text, fields[2 * bi], stamp
  local full = math.ceil((B[bi][2] - level[bi]) / B[bi][3] * 1000) + 60000
  if full > ttl then ttl = full end
end
if #set > 0 then
  redis.call('HSET', buckets, unpack(set))
  if redis.call('PTTL', buckets) < ttl then redis.call('PEXPIRE', buckets, ttl) end
end
for key, lease in pairs(leases) do redis.call('PEXPIRE', key, math.ceil(lease * 1000) + 60000) end
for pi, est in pairs(added) do redis.call('HINCRBY', spend, P[pi][1] .. ':r', string.format('%.0f', est)) end
if #pend > 0 then redis.call('ZADD', pending, unpack(pend)) end
return table.concat(results, '\\n')
"""

# KEYS: pending, ledger, buckets hash, spend hash, then every record, aggregate and slot key of the batch.
# ARGV[1]: {ret: retention, B: [[token bucket field, capacity, rate]], P: [spend field], i: [{r: record key,
#           e: entry, a: aggregates key, s: [slot keys], b: [index in B], p: [index in P], refund, est, cost, ts,
#           agg: {name: value}}]}; ARGV[1 + n]: request n's record. Each record is settled once (its state is
#           checked, one after the other); what the settled ones change in shared counters is summed and
#           written once.
_SETTLE = """
local batch = cjson.decode(ARGV[1])
local B, P = batch.B, batch.P
local pending, ledger, buckets, spend = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local level, reserved, spent, aggs, slots, gone, logged = {}, {}, {}, {}, {}, {}, {}
local out = {}
for idx, it in ipairs(batch.i) do
  if redis.call('HGET', it.r, 'state') ~= 'reserved' then
    out[idx] = '0'
  else
    out[idx] = '1'
    if it.refund ~= 0 then
      for _, bi in ipairs(it.b) do
        local cap, rate = B[bi][2], B[bi][3]
        local v = level[bi]
        if v == nil then
          local h = redis.call('HMGET', buckets, B[bi][1] .. ':v', B[bi][1] .. ':t')
          local a = tonumber(h[2]) or now
          v = tonumber(h[1]) or cap
          if now > a then v = v + (now - a) * rate end
        end
        v = v + it.refund
        if v > cap then v = cap end
        level[bi] = v
      end
    end
    for _, key in ipairs(it.s) do
      slots[key] = slots[key] or {}
      table.insert(slots[key], it.e)
    end
    for _, pi in ipairs(it.p) do
      reserved[pi] = (reserved[pi] or 0) - it.est
      spent[pi] = (spent[pi] or 0) + it.cost
    end
    redis.call('HSET', it.r, 'state', 'settled', 'record', ARGV[1 + idx])
    redis.call('HDEL', it.r, 'plan')
    redis.call('EXPIRE', it.r, batch.ret)
    gone[#gone + 1] = it.e
    logged[#logged + 1], logged[#logged + 2] = it.ts, it.e
    local sums = aggs[it.a] or {}
    aggs[it.a] = sums
    for name, value in pairs(it.agg) do sums[name] = (sums[name] or 0) + value end
  end
end
for bi, v in pairs(level) do
  redis.call('HSET', buckets, B[bi][1] .. ':v', tostring(v), B[bi][1] .. ':t', tostring(now))
end
for key, members in pairs(slots) do redis.call('ZREM', key, unpack(members)) end
for pi, d in pairs(reserved) do
  if d ~= 0 then redis.call('HINCRBY', spend, P[pi] .. ':r', string.format('%.0f', d)) end
end
for pi, d in pairs(spent) do
  if d ~= 0 then redis.call('HINCRBY', spend, P[pi] .. ':s', string.format('%.0f', d)) end
end
if #gone > 0 then
  redis.call('ZREM', pending, unpack(gone))
  redis.call('ZADD', ledger, unpack(logged))
end
for key, sums in pairs(aggs) do
  for name, value in pairs(sums) do
    if value ~= 0 then redis.call('HINCRBY', key, name, string.format('%.0f', value)) end
  end
  redis.call('EXPIRE', key, batch.ret)
end
return table.concat(out)
"""

# KEYS: a deployment's in-flight key. ARGV: holder, limit, lease, holder, limit, lease, ... in arrival order.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
local out, ttl = {}, 0
for i = 1, #ARGV / 3 do
  local lease = tonumber(ARGV[3 * i])
  if held < tonumber(ARGV[3 * i - 1]) then
    held = held + redis.call('ZADD', KEYS[1], now + lease, ARGV[3 * i - 2])
    out[i] = '1'
    if lease > ttl then ttl = lease end
  else
    out[i] = '0'
  end
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000) + 60000) end
return table.concat(out)
"""


def _past_period(field: str, now: float) -> bool:
    """A budget counter of a day or month that ended (``...:spend:d:YYYY-MM-DD:s``): kept a day longer."""
    _, _, rest = field.rpartition(":spend:")
    period, _, _ = rest.rpartition(":")
    kind, _, when = period.partition(":")
    yesterday = utc_day(now - 86400)
    return (kind == "d" and when < yesterday) or (kind == "m" and when < yesterday[:7])


def tag(tenant: str) -> str:
    """The hash-tag part of every key of ``tenant`` (braces in a name would break the tag: escaped)."""
    return "{t:" + tenant.replace("{", "%7B").replace("}", "%7D") + "}"


def record_key(tenant: str, entry: str) -> str:
    return f"gw:{tag(tenant)}:r:{entry}"


_MAX_BATCH = 200  # requests per script call: keeps a batch's unpack() far below Lua's stack limit
_LAZY = frozenset({"settle", "release"})
_LAZY_S = 0.002
# One pipeline in flight per process: what comes meanwhile waits for its answer and goes next, as one batch
# (measured: about 30 us less gateway CPU per request than a pipeline per turn, and fewer, larger scripts).
_MAX_FLUSHING = 1


@dataclass(slots=True)
class _Op:
    """One caller's share of a batched script call."""

    item: Any  # what the script reads of this request
    text: str | bytes = ""  # its plan (admit) or record (settle): an argument of its own
    keys: tuple[str, ...] = ()  # the keys it touches besides the group's, declared for Redis Cluster
    future: asyncio.Future[Any] | None = None


class RedisStore:
    name = "redis"

    def __init__(self, layer: StoreLayer, *, retention_days: int = 400, clock: Clock = SYSTEM) -> None:
        self._layer = layer
        self._clock = (
            clock  # what records and budget days are aged by: the clock that stamped them (admission's)
        )
        self._retention_s = retention_days * 86400
        self._sha = {
            script: hashlib.sha1(script.encode()).hexdigest() for script in (_ADMIT, _SETTLE, _ACQUIRE)
        }
        self._queued: dict[tuple[str, str], list[_Op]] = {}
        self._soon = False  # a flush is due this turn
        self._urgent = False  # someone waits for what is queued
        self._timer: asyncio.TimerHandle | None = None  # a flush is due in _LAZY_S
        self._flushing: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> Any:
        """The layer's client (opened by the app after this store is built)."""
        return self._layer.redis

    async def _call(self, kind: str, group: str, op: _Op) -> Any:
        """Queues one request's part of a script. Everything queued in the same turn of the event loop goes
        in one pipeline, and the requests of one kind and one group (a tenant, a deployment's key) in one
        script call: under load the socket calls, the client's packing and parsing and the server's per-call
        work cost more than what the scripts do, so a batch of requests costs about what one did.
        Settlements and releases wait for the next admission's pipeline (at most ``_LAZY_S``): nobody waits
        for them, and they then cost no socket call of their own."""
        loop = asyncio.get_running_loop()
        op.future = loop.create_future()
        self._queued.setdefault((kind, group), []).append(op)
        if kind not in _LAZY:
            self._urgent = True
            if not self._soon:
                self._soon = True
                loop.call_soon(self._flush_batch)
        elif self._timer is None and not self._soon:
            self._timer = loop.call_later(_LAZY_S, self._flush_batch)
        return await op.future

    def _flush_batch(self) -> None:
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._queued or len(self._flushing) >= _MAX_FLUSHING:
            return  # a pipeline in flight: what is queued goes when it is answered, in one bigger batch
        self._urgent = False
        queued, self._queued = self._queued, {}
        commands = [
            (kind, group, ops[i : i + _MAX_BATCH])
            for (kind, group), ops in queued.items()
            for i in range(0, len(ops), _MAX_BATCH)
        ]
        task = asyncio.get_running_loop().create_task(self._flush(commands))
        self._flushing.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        if self._urgent:
            self._flush_batch()
        elif self._queued and self._timer is None and not self._soon:
            self._timer = asyncio.get_running_loop().call_later(_LAZY_S, self._flush_batch)

    def _command(self, kind: str, group: str, ops: list[_Op]) -> tuple[str | None, list[Any]]:
        """The script (None: a plain command) and its arguments for one batch."""
        if kind == "release":
            return None, ["ZREM", group, *(op.item for op in ops)]
        if kind == "acquire":
            return _ACQUIRE, [1, group, *(part for op in ops for part in op.item)]
        # a batch's buckets and spends are sent once, its requests name them by index (1-based, for Lua)
        bucket_index: dict[str, tuple[int, float, float]] = {}
        spend_index: dict[str, tuple[int, int, int]] = {}
        items = []
        for op in ops:
            item = dict(op.item)
            if kind == "admit":
                item["b"] = [
                    (bucket_index.setdefault(key, (len(bucket_index) + 1, cap, rate))[0], cost)
                    for key, cap, rate, cost in item["b"]
                ]
                item["p"] = [
                    spend_index.setdefault(key, (len(spend_index) + 1, limit, soft))[0]
                    for key, limit, soft in item["p"]
                ]
            else:
                item["b"] = [
                    bucket_index.setdefault(key, (len(bucket_index) + 1, cap, rate))[0]
                    for key, cap, rate in item["b"]
                ]
                item["p"] = [
                    spend_index.setdefault(key, (len(spend_index) + 1, 0, 0))[0] for key in item["p"]
                ]
            items.append(item)
        buckets = [(key, cap, rate) for key, (_, cap, rate) in bucket_index.items()]
        if kind == "admit":
            keys = [f"{group}:buckets", f"{group}:spend", f"{group}:pending"]
            spends: list[Any] = [(key, limit, soft) for key, (_, limit, soft) in spend_index.items()]
            params = orjson.dumps({"B": buckets, "P": spends, "i": items})
        else:
            keys = [f"{group}:pending", f"{group}:ledger", f"{group}:buckets", f"{group}:spend"]
            params = orjson.dumps(
                {"ret": self._retention_s, "B": buckets, "P": list(spend_index), "i": items}
            )
        keys += dict.fromkeys(key for op in ops for key in op.keys)
        return _ADMIT if kind == "admit" else _SETTLE, [len(keys), *keys, params, *(op.text for op in ops)]

    async def _flush(self, commands: list[tuple[str, str, list[_Op]]]) -> None:
        built = [self._command(*command) for command in commands]
        try:
            results = await self._pipeline(built)
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:  # a restarted Redis has forgotten the scripts: load them, run those again
                for script in {built[i][0] for i in missing}:
                    if script is not None:
                        await self.client.script_load(script)
                again = await self._pipeline([built[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except BaseException as exc:  # the connection failed: every caller gets the error
            for *_, ops in commands:
                for op in ops:
                    if op.future is not None and not op.future.done():
                        op.future.set_exception(
                            exc if isinstance(exc, Exception) else ConnectionError("cancelled")
                        )
            if not isinstance(exc, Exception):
                raise
            return
        for (kind, _, ops), result in zip(commands, results, strict=True):
            parts: Any = None
            if not isinstance(result, Exception):
                parts = (
                    result.split("\n")
                    if kind == "admit"
                    else result
                    if kind != "release"
                    else [None] * len(ops)
                )
            for i, op in enumerate(ops):
                if op.future is None or op.future.done():
                    continue
                if isinstance(result, Exception):
                    op.future.set_exception(result)
                else:
                    op.future.set_result(parts[i])

    async def _pipeline(self, built: list[tuple[str | None, list[Any]]]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for script, args in built:
                if script is None:
                    pipe.execute_command(*args)
                else:  # not pipe.evalsha: redis-py's cluster pipeline blocks that name (it routes the command)
                    pipe.execute_command("EVALSHA", self._sha[script], *args)
            return list(await pipe.execute(raise_on_error=False))

    async def admit(self, reservation: Reservation) -> AdmitResult:
        r = reservation
        rec = record_key(r.tenant, r.entry_id)
        item = {
            "r": rec,
            "e": r.entry_id,
            "o": r.attempt,
            "b": [(b.key, b.capacity, b.rate, b.cost) for b in r.buckets],
            "s": [(s.key, s.limit) for s in r.slots],
            "p": [
                (s.key, -1 if s.limit is None else s.limit, -1 if s.soft is None else s.soft)
                for s in r.spends
            ],
            "est": r.est_cost,
            "l": r.lease_s,
        }
        out = await self._call(
            "admit", f"gw:{tag(r.tenant)}", _Op(item, orjson.dumps(r), (rec, *(s.key for s in r.slots)))
        )
        out = out.split(" ")  # one string: parsing a multi-bulk reply costs the client more
        outcome = out[0]
        if outcome == "ok":
            split = out.index("soft")
            return AdmitResult(
                "ok",
                levels=[float(v) for v in out[3:split]],
                soft=[int(k) - 1 for k in out[split + 1 :]],
                store=self.name,
            )
        if outcome == "bucket":
            return AdmitResult(
                "bucket",
                index=int(out[1]) - 1,
                retry_after=float(out[2]),
                levels=[float(v) for v in out[3:]],
                store=self.name,
            )
        if outcome == "again":  # this admission ran already (its reply was lost and it was sent again)
            return AdmitResult("ok", store=self.name)
        if outcome == "dup":
            return AdmitResult("dup", store=self.name)
        return AdmitResult(outcome, index=int(out[1]) - 1, store=self.name)

    async def settle(self, settlement: Settlement) -> bool:
        r = settlement.reservation
        t = tag(r.tenant)
        rec, agg = record_key(r.tenant, r.entry_id), f"gw:{t}:agg:{r.day}"
        slots = [s.key for s in r.slots]
        item = {
            "r": rec,
            "e": r.entry_id,
            "a": agg,
            "s": slots,
            "b": [(b.key, b.capacity, b.rate) for b in r.buckets if b.kind == "tokens"],
            "p": [s.key for s in r.spends],
            "refund": r.est_prompt + r.est_completion - settlement.tokens,
            "est": r.est_cost,
            "cost": settlement.cost,
            "ts": repr(r.ts),
            "agg": {name: value for name, value in settlement.aggregates().items() if value},
        }
        done = await self._call(
            "settle", f"gw:{t}", _Op(item, orjson.dumps(settlement.record()), (rec, agg, *slots))
        )
        return bool(done == "1")

    async def sweep(self, tenants: list[str]) -> int:
        settled = 0
        now = await self._now()
        for tenant in tenants:
            t = tag(tenant)
            overdue = await self.client.zrangebyscore(f"gw:{t}:pending", "-inf", now, start=0, num=1000)
            if overdue:
                async with self.client.pipeline(transaction=False) as pipe:
                    for entry in overdue:
                        pipe.hget(record_key(tenant, str(entry)), "plan")
                    plans = await pipe.execute()
                gone = [str(entry) for entry, plan in zip(overdue, plans, strict=True) if plan is None]
                if gone:
                    await self.client.zrem(f"gw:{t}:pending", *gone)
                done = await asyncio.gather(
                    *(  # together: one batched script call
                        self.settle(settle_at_estimate(Reservation.from_json(orjson.loads(plan))))
                        for plan in plans
                        if plan is not None
                    )
                )
                settled += sum(done)
            # Leases are Redis's time; record timestamps and days are the policies' clock, so they age by it.
            wall = self._clock.time()
            await self.client.zremrangebyscore(f"gw:{t}:ledger", "-inf", wall - self._retention_s)
            old = [f for f in map(str, await self.client.hkeys(f"gw:{t}:spend")) if _past_period(f, wall)]
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
        return {
            day: {k: int(v) for k, v in data.items()} for day, data in zip(days, found, strict=True) if data
        }

    async def records(self, tenant: str, start: float, end: float, limit: int) -> list[dict[str, Any]]:
        t = tag(tenant)
        entries = await self.client.zrangebyscore(f"gw:{t}:ledger", start, f"({end}", start=0, num=limit)
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in map(str, entries):
                pipe.hget(record_key(tenant, entry), "record")
            found = await pipe.execute()
        return [orjson.loads(r) for r in found if r is not None]

    async def spent(self, key: str) -> tuple[int, int]:
        tenant_tag = key[key.index("{") : key.index("}") + 1]
        spent, reserved = await self.client.hmget(f"gw:{tenant_tag}:spend", key + ":s", key + ":r")
        return int(spent or 0), int(reserved or 0)

    async def acquire(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        return bool(await self._call("acquire", key, _Op((holder, limit, lease_s))) == "1")

    async def release(self, key: str, holder: str) -> None:
        await self._call("release", key, _Op(holder))  # ZREM alone is atomic: many holders in one

    async def close(self) -> None:
        """Writes what is still queued (the client is the layer's: it stays open)."""
        while self._queued or self._flushing:
            self._flush_batch()
            await asyncio.gather(*self._flushing, return_exceptions=True)
