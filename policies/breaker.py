"""One circuit breaker per deployment: closed -> open -> half-open -> closed.

Closed: every request goes through; the breaker opens after ``failures`` consecutive failures, or when
the share of failures over the last ``window_s`` reaches ``failure_ratio`` (once it has seen
``min_requests``). Open: no request goes through until ``cooldown_s`` has passed; then one trial request
is let through (half-open, one process wins it): its success closes the breaker, its failure opens it again.

State lives in a store: in process memory (one gateway process), or in Redis so that every gateway
process shares it. With Redis, outcomes while closed (successes and failures alike) are counted in the
process and pushed together every ``sync_s``, so the shared window sees them in the proportion they
happened; a process whose own outcomes would trip the breaker pushes at once. The same sync pulls the
others' changes: another process learns that a breaker opened within ``sync_s``. Trial outcomes go to the
store at once.

A tenant whose requests fail is contained: every tenant has its own breaker per deployment in front of
the shared one (process memory, same thresholds), and a shared breaker opened by one tenant's failures
alone lets another tenant's request through at once as its trial, so one tenant's bad requests do not
take a deployment from the others for a cool-down.

Why not pybreaker: its storages (``CircuitMemoryState``, ``CircuitRedisState``) are synchronous, its
Redis storage takes a blocking client and does one round trip per call (success included), and its
transitions are not atomic across processes. A read-modify-write per request on the event loop is what a
gateway cannot afford, so the state machine is here, mirrored as one Lua script for Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import structlog

from .clock import SYSTEM, Clock
from .resilience_config import BreakerConfig
from .stores.layer import StoreLayer

_SLOTS = 10  # the failure-ratio window is counted in this many time slots
ANY = "*"  # an outcome of no one tenant in particular (and: the failures of several tenants)
_REDIS_OP_TIMEOUT_S = 0.25


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class View:
    """A breaker's state as one process last saw it."""

    state: State = State.CLOSED
    open_until: float = 0.0  # wall-clock seconds (shared across processes)
    failures: int = 0  # consecutive
    trial_until: float = 0.0  # half-open: until when the trial holds its place
    by: str = ""  # the tenant of the failures since the last success; "*": several


@dataclass(slots=True)
class _Entry:
    view: View = field(default_factory=View)
    slots: dict[int, list[int]] = field(default_factory=dict)  # slot -> [requests, failures]


@dataclass(slots=True)
class Outcomes:
    """What one process saw of a closed breaker since its last push."""

    successes: int = 0
    failures: int = 0
    run: int = 0  # failures since this process's last success
    by: str = ""


class Store(Protocol):
    async def op(
        self,
        key: str,
        op: str,
        now: float,
        count: int = 1,
        *,
        successes: int = 0,
        run: int = 0,
        tenant: str = ANY,
    ) -> tuple[View, bool]: ...
    async def read(self, keys: Iterable[str]) -> dict[str, View]: ...


class MemoryStore:
    """The state machine itself; the Lua script below is the same, line for line."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self._entries: dict[str, _Entry] = {}
        self._slot_s = config.window_s / _SLOTS

    async def op(
        self,
        key: str,
        op: str,
        now: float,
        count: int = 1,
        *,
        successes: int = 0,
        run: int = 0,
        tenant: str = ANY,
    ) -> tuple[View, bool]:
        return self.apply(key, op, now, count, successes=successes, run=run, tenant=tenant)

    def apply(
        self,
        key: str,
        op: str,
        now: float,
        count: int = 1,
        *,
        successes: int = 0,
        run: int = 0,
        tenant: str = ANY,
    ) -> tuple[View, bool]:
        """``op``: failure, success, successes (batched, closed state only), outcomes (a batch of ``count``
        failures and ``successes`` seen while closed, ``run`` of them failures since the last success) or
        trial (``tenant``'s). Returns the new view and, for a trial, whether this caller got it."""
        c = self.config
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        view = entry.view
        granted = False
        if op == "failure":
            view.failures += count
            view.by = _blame(view.by, tenant)
            if view.state is State.HALF_OPEN:
                view.state, view.open_until = State.OPEN, now + c.cooldown_s
            elif view.state is State.CLOSED:
                self._judge(entry, now, count, count)
        elif op == "outcomes":
            if view.state is State.CLOSED:
                if successes:
                    view.failures, view.by = run, tenant if run else ""
                else:
                    view.failures, view.by = view.failures + count, _blame(view.by, tenant)
                self._judge(entry, now, count + successes, count)
        elif op == "success":
            if view.state is State.HALF_OPEN:
                view.state, view.failures, view.by = State.CLOSED, 0, ""
                entry.slots.clear()
            elif view.state is State.CLOSED:
                view.failures, view.by = 0, ""
                self._add(entry, now, count, 0)
        elif op == "successes":
            if view.state is State.CLOSED:
                self._add(entry, now, count, 0)
        elif op == "trial":
            # A trial whose answer never came (its process died) is given again after a cool-down; a
            # breaker opened by one tenant's failures alone gives another tenant the trial at once.
            if (
                view.state is State.OPEN
                and (now >= view.open_until or _other(view.by, tenant))
                and now >= view.trial_until
            ) or (view.state is State.HALF_OPEN and now >= view.trial_until):
                view.state, view.trial_until, granted = State.HALF_OPEN, now + c.cooldown_s, True
        return View(view.state, view.open_until, view.failures, view.trial_until, view.by), granted

    def _judge(self, entry: _Entry, now: float, requests: int, failures: int) -> None:
        """Closed: count outcomes and open when the run or the window's ratio says so."""
        c, view = self.config, entry.view
        total, failed = self._add(entry, now, requests, failures)
        if failures and (
            view.failures >= c.failures or (total >= c.min_requests and failed / total >= c.failure_ratio)
        ):
            view.state, view.open_until = State.OPEN, now + c.cooldown_s
            entry.slots.clear()

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def view(self, key: str) -> View:
        entry = self._entries.get(key)
        return entry.view if entry is not None else _CLOSED

    def count_success(self, key: str, now: float) -> None:
        """A success while closed with no failure pending: only the window's count changes (the hot path)."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        self._count(entry, now, 1, 0)

    def _count(self, entry: _Entry, now: float, requests: int, failures: int) -> None:
        slot = int(now / self._slot_s)
        counts = entry.slots.get(slot)
        if counts is None:
            for old in [s for s in entry.slots if s <= slot - _SLOTS]:
                del entry.slots[old]
            counts = entry.slots[slot] = [0, 0]
        counts[0] += requests
        counts[1] += failures

    def _add(self, entry: _Entry, now: float, requests: int, failures: int) -> tuple[int, int]:
        self._count(entry, now, requests, failures)
        return sum(c[0] for c in entry.slots.values()), sum(c[1] for c in entry.slots.values())

    async def read(self, keys: Iterable[str]) -> dict[str, View]:
        out: dict[str, View] = {}
        for key in keys:
            entry = self._entries.get(key)
            view = entry.view if entry is not None else View()
            out[key] = View(view.state, view.open_until, view.failures, view.trial_until, view.by)
        return out


_CLOSED = View()


def _blame(by: str, tenant: str) -> str:
    return tenant if by in ("", tenant) else ANY


def _other(by: str, tenant: str) -> bool:
    """Whether a breaker opened by ``by``'s failures should let ``tenant`` try at once."""
    return by not in ("", ANY) and tenant != ANY and tenant != by


# KEYS[1]: the state hash, KEYS[2]: the window hash; ARGV: op, now, count, failures, failure_ratio,
# min_requests, window_s, cooldown_s, successes, run, tenant. Same transitions as MemoryStore.apply.
_SCRIPT = """
local op, now, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_failures, ratio, min_requests = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window, cooldown = tonumber(ARGV[7]), tonumber(ARGV[8])
local successes, run, tenant = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
local h = redis.call('HMGET', KEYS[1], 'state', 'until', 'failures', 'trial_until', 'by')
local state = h[1] or 'closed'
local open_until, failures, trial_until = tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or 0
local by = h[5] or ''
local slot = math.floor(now / (window / 10))
local function add(requests, fails)
  redis.call('HINCRBY', KEYS[2], 'r' .. slot, requests)
  if fails > 0 then redis.call('HINCRBY', KEYS[2], 'f' .. slot, fails) end
  redis.call('PEXPIRE', KEYS[2], math.ceil(window * 2000))
  local all = redis.call('HGETALL', KEYS[2])
  local r, f = 0, 0
  for i = 1, #all, 2 do
    local s = tonumber(string.sub(all[i], 2))
    if s <= slot - 10 then
      redis.call('HDEL', KEYS[2], all[i])
    elseif string.sub(all[i], 1, 1) == 'r' then
      r = r + tonumber(all[i + 1])
    else
      f = f + tonumber(all[i + 1])
    end
  end
  return r, f
end
local function judge(requests, fails)
  local r, f = add(requests, fails)
  if fails > 0 and (failures >= max_failures or (r >= min_requests and f / r >= ratio)) then
    state, open_until = 'open', now + cooldown
    redis.call('DEL', KEYS[2])
  end
end
local function blame()
  if by == '' or by == tenant then return tenant end
  return '*'
end
local granted = 0
if op == 'failure' then
  failures = failures + count
  by = blame()
  if state == 'half_open' then
    state, open_until = 'open', now + cooldown
  elseif state == 'closed' then
    judge(count, count)
  end
elseif op == 'outcomes' then
  if state == 'closed' then
    if successes > 0 then
      failures = run
      if run > 0 then by = tenant else by = '' end
    else
      failures = failures + count
      by = blame()
    end
    judge(count + successes, count)
  end
elseif op == 'success' then
  if state == 'half_open' then
    state, failures, by = 'closed', 0, ''
    redis.call('DEL', KEYS[2])
  elseif state == 'closed' then
    failures, by = 0, ''
    add(count, 0)
  end
elseif op == 'successes' then
  if state == 'closed' then add(count, 0) end
elseif op == 'trial' then
  local other = by ~= '' and by ~= '*' and tenant ~= '*' and tenant ~= by
  if (state == 'open' and (now >= open_until or other) and now >= trial_until)
      or (state == 'half_open' and now >= trial_until) then
    state, trial_until, granted = 'half_open', now + cooldown, 1
  end
end
-- %.17g: Lua's tostring keeps 14 digits, 0.1 ms at today's epoch, and a cool-down rounded up ends late
local until_text, trial_text = string.format('%.17g', open_until), string.format('%.17g', trial_until)
redis.call('HSET', KEYS[1], 'state', state, 'until', until_text, 'failures', failures,
           'trial_until', trial_text, 'by', by)
return {state, until_text, failures, granted, trial_text, by}
"""


def _key(name: str) -> str:
    # A hash tag ({...}) keeps a breaker's two keys in one Redis Cluster slot, as its script needs.
    return "gw:breaker:{" + name + "}"


class RedisStore:
    """Shared by every gateway process using the same Redis, through the process's store layer. When Redis
    is away the layer's policy applies: fail open, the operation goes to a process-local MemoryStore; fail
    closed, a trial (which decides whether a request goes on) is refused with 503 while outcomes are still
    counted in memory."""

    def __init__(self, config: BreakerConfig, layer: StoreLayer) -> None:
        self.config = config
        self._layer = layer
        self._fallback = MemoryStore(config)
        self._args = (
            config.failures,
            config.failure_ratio,
            config.min_requests,
            config.window_s,
            config.cooldown_s,
        )

    async def op(
        self,
        key: str,
        op: str,
        now: float,
        count: int = 1,
        *,
        successes: int = 0,
        run: int = 0,
        tenant: str = ANY,
    ) -> tuple[View, bool]:
        return await self._layer.health.call(
            f"breaker_{op}",
            lambda: self._op(key, op, now, count, successes, run, tenant),
            lambda: self._fallback.op(key, op, now, count, successes=successes, run=run, tenant=tenant),
            decides=op == "trial",
        )

    async def _op(
        self, key: str, op: str, now: float, count: int, successes: int, run: int, tenant: str
    ) -> tuple[View, bool]:
        async with asyncio.timeout(_REDIS_OP_TIMEOUT_S):
            state, until, failures, granted, trial_until, by = await self._layer.script(
                _SCRIPT,
                [_key(key), _key(key) + ":w"],
                [op, repr(now), count, *self._args, successes, run, tenant],
            )
        return View(
            State(_text(state)), float(_text(until)), int(failures), float(_text(trial_until)), _text(by)
        ), bool(granted)

    async def read(self, keys: Iterable[str]) -> dict[str, View]:
        keys = list(keys)
        return await self._layer.health.call(
            "breaker_read", lambda: self._read(keys), lambda: self._fallback.read(keys), decides=False
        )

    async def _read(self, keys: list[str]) -> dict[str, View]:
        async with asyncio.timeout(_REDIS_OP_TIMEOUT_S):
            async with self._layer.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(_key(key), "state", "until", "failures", "trial_until", "by")
                rows = await pipe.execute()
        out: dict[str, View] = {}
        for key, (state, until, failures, trial_until, by) in zip(keys, rows, strict=True):
            out[key] = View(
                State(_text(state)) if state else State.CLOSED,
                float(_text(until or b"0")),
                int(failures or 0),
                float(_text(trial_until or b"0")),
                _text(by or ""),
            )
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


Listener = Callable[[str, State], None]


class Breakers:
    """The breakers of every deployment, by key (``alias/deployment``), and every tenant's in front of them."""

    def __init__(
        self,
        config: BreakerConfig,
        keys: Iterable[str],
        stores: StoreLayer | None = None,
        on_change: Listener | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        """``stores``: the process's store layer; breakers share state through it when it has Redis."""
        self.config = config
        self.shared = stores is not None and stores.shared
        # This process's own count: the breakers themselves without Redis; with Redis, what tells the
        # process that its own outcomes would trip a breaker (then it pushes them at once).
        self._local = MemoryStore(config)
        self.store: Store = RedisStore(config, stores) if self.shared else self._local  # type: ignore[arg-type]  # shared: a layer
        self._views = {key: View() for key in keys}
        self._pending: dict[str, Outcomes] = {}  # Redis: outcomes while closed, not yet pushed
        self._tenants = MemoryStore(config)  # tenant breakers, by tenant + "\0" + key
        self._tenant_open: dict[tuple[str, str], View] = {}  # those not closed
        self._on_change = on_change
        self._sync_task: asyncio.Task[None] | None = None
        self._clock = clock.time  # wall-clock: cool-downs are shared with other processes through Redis

    def closed(self, key: str, tenant: str = ANY) -> bool:
        """The hot path: no await, no store."""
        return not self.config.enabled or (
            self._views[key].state is State.CLOSED
            and (not self._tenant_open or (tenant, key) not in self._tenant_open)
        )

    def state(self, key: str) -> State:
        return self._views[key].state

    def view(self, key: str) -> View:
        return self._views[key]

    def tenant_state(self, key: str, tenant: str) -> State:
        view = self._tenant_open.get((tenant, key))
        return State.CLOSED if view is None else view.state

    async def admit(self, key: str, tenant: str = ANY) -> bool:
        """Whether ``tenant``'s request may go to this deployment now (an open breaker past its cool-down
        lets one trial through)."""
        if not self.config.enabled:
            return True
        now = self._clock()
        if (tenant, key) in self._tenant_open:
            view, granted = self._tenants.apply(f"{tenant}\0{key}", "trial", now)
            self._tenant_open[(tenant, key)] = view
            if not granted:
                return False
        view = self._views[key]
        if view.state is State.CLOSED:
            return True
        early = _other(view.by, tenant)
        if view.state is State.OPEN and now < view.open_until and not (early and now >= view.trial_until):
            return False
        if view.state is State.HALF_OPEN and now < view.trial_until:
            return False  # another request holds the trial: no store round trip per request meanwhile
        new, granted = await self.store.op(key, "trial", now, tenant=tenant)
        self._update(key, new)
        return granted

    async def success(self, key: str, tenant: str = ANY) -> None:
        if not self.config.enabled:
            return
        now = self._clock()
        self._tenant_outcome(key, tenant, "success", now)
        view = self._views[key]
        if view.state is State.CLOSED:
            if self.shared:
                self._local_success(key, now)
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = Outcomes()
                pending.successes += 1
                pending.run = 0
                return
            if view.failures == 0:
                self._local.count_success(key, now)
                return
        new, _ = await self.store.op(key, "success", now, tenant=tenant)
        self._update(key, new)

    async def failure(self, key: str, tenant: str = ANY) -> None:
        if not self.config.enabled:
            return
        now = self._clock()
        self._tenant_outcome(key, tenant, "failure", now)
        if self.shared and self._views[key].state is State.CLOSED:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = Outcomes()
            pending.failures += 1
            pending.run += 1
            pending.by = _blame(pending.by, tenant)
            local, _ = self._local.apply(key, "failure", now, tenant=tenant)
            if local.state is not State.CLOSED:  # this process's outcomes alone trip it: push them now
                self._local.forget(key)
                await self._push(key, now)
            return
        new, _ = await self.store.op(key, "failure", now, tenant=tenant)
        self._update(key, new)

    def _local_success(self, key: str, now: float) -> None:
        if self._local.view(key).failures == 0:
            self._local.count_success(key, now)
        else:
            self._local.apply(key, "success", now)

    def _tenant_outcome(self, key: str, tenant: str, op: str, now: float) -> None:
        if tenant == ANY:
            return
        name = f"{tenant}\0{key}"
        if op == "success" and self._tenants.view(name).failures == 0:
            self._tenants.count_success(name, now)
            return
        view, _ = self._tenants.apply(name, op, now)
        if view.state is State.CLOSED:
            self._tenant_open.pop((tenant, key), None)
        else:
            self._tenant_open[(tenant, key)] = view

    async def snapshot(self) -> dict[str, View]:
        """Fresh from the store (the admin API)."""
        views = await self.store.read(self._views)
        for key, view in views.items():
            self._update(key, view)
        return views

    def _update(self, key: str, new: View) -> None:
        old = self._views[key]
        self._views[key] = new
        if new.state is not old.state:
            if self.shared:
                self._local.forget(key)
            if self._on_change is not None:
                self._on_change(key, new.state)

    async def start(self) -> None:
        if self.shared and self.config.enabled:
            await self.snapshot()
            self._sync_task = asyncio.create_task(self._sync())

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            try:
                await self._sync_task
            except asyncio.CancelledError:
                pass
            self._sync_task = None
        await self._flush()

    async def _sync(self) -> None:
        while True:
            await asyncio.sleep(self.config.sync_s)
            try:
                await self._flush()
                await self.snapshot()
            except Exception:  # the sync must outlive any one failure (the store's are handled below it)
                structlog.get_logger("gateway").exception("breaker sync failed")

    async def _flush(self) -> None:
        now = self._clock()
        for key in list(self._pending):
            await self._push(key, now)

    async def _push(self, key: str, now: float) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        new, _ = await self.store.op(
            key,
            "outcomes",
            now,
            pending.failures,
            successes=pending.successes,
            run=pending.run,
            tenant=pending.by or ANY,
        )
        self._update(key, new)
