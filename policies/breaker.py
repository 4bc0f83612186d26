"""One circuit breaker per deployment: closed -> open -> half-open -> closed.

Closed: every request goes through; the breaker opens after ``failures`` consecutive failures, or when
the share of failures over the last ``window_s`` reaches ``failure_ratio`` (once it has seen
``min_requests``). Open: no request goes through until ``cooldown_s`` has passed; then one trial request
is let through (half-open, one process wins it): its success closes the breaker, its failure opens it again.

State lives in a store: in process memory (one gateway process), or in Redis so that every gateway
process shares it. The hot path reads a local view of the state and touches the store only on a failure,
on a trial, or (Redis) in a background sync every ``sync_s`` that pushes batched success counts and pulls
the others' changes: another process learns that a breaker opened within ``sync_s``.

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

_SLOTS = 10          # the failure-ratio window is counted in this many time slots
_REDIS_OP_TIMEOUT_S = 0.25


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class View:
    """A breaker's state as one process last saw it."""

    state: State = State.CLOSED
    open_until: float = 0.0          # wall-clock seconds (shared across processes)
    failures: int = 0                # consecutive
    trial_until: float = 0.0         # half-open: until when the trial holds its place


@dataclass(slots=True)
class _Entry:
    view: View = field(default_factory=View)
    slots: dict[int, list[int]] = field(default_factory=dict)   # slot -> [requests, failures]


class Store(Protocol):
    async def op(self, key: str, op: str, now: float, count: int = 1) -> tuple[View, bool]: ...
    async def read(self, keys: Iterable[str]) -> dict[str, View]: ...


class MemoryStore:
    """The state machine itself; the Lua script below is the same, line for line."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self._entries: dict[str, _Entry] = {}
        self._slot_s = config.window_s / _SLOTS

    async def op(self, key: str, op: str, now: float, count: int = 1) -> tuple[View, bool]:
        return self.apply(key, op, now, count)

    def apply(self, key: str, op: str, now: float, count: int = 1) -> tuple[View, bool]:
        """``op``: failure, success, successes (batched, closed state only) or trial. Returns the new view
        and, for a trial, whether this caller got it."""
        c = self.config
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        view = entry.view
        granted = False
        if op == "failure":
            view.failures += count
            if view.state is State.HALF_OPEN:
                view.state, view.open_until = State.OPEN, now + c.cooldown_s
            elif view.state is State.CLOSED:
                requests, failures = self._add(entry, now, count, count)
                if view.failures >= c.failures or (requests >= c.min_requests
                                                   and failures / requests >= c.failure_ratio):
                    view.state, view.open_until = State.OPEN, now + c.cooldown_s
                    entry.slots.clear()
        elif op == "success":
            if view.state is State.HALF_OPEN:
                view.state, view.failures = State.CLOSED, 0
                entry.slots.clear()
            elif view.state is State.CLOSED:
                view.failures = 0
                self._add(entry, now, count, 0)
        elif op == "successes":
            if view.state is State.CLOSED:
                self._add(entry, now, count, 0)
        elif op == "trial":
            if (view.state is State.OPEN and now >= view.open_until) or \
                    (view.state is State.HALF_OPEN and now >= view.trial_until):
                # A trial whose answer never came (its process died) is given again after a cool-down.
                view.state, view.trial_until, granted = State.HALF_OPEN, now + c.cooldown_s, True
        return View(view.state, view.open_until, view.failures, view.trial_until), granted

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
            out[key] = View(view.state, view.open_until, view.failures, view.trial_until)
        return out


# KEYS[1]: the state hash, KEYS[2]: the window hash; ARGV: op, now, count, failures, failure_ratio,
# min_requests, window_s, cooldown_s. Same transitions as MemoryStore.apply.
_SCRIPT = """
local op, now, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_failures, ratio, min_requests = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window, cooldown = tonumber(ARGV[7]), tonumber(ARGV[8])
local h = redis.call('HMGET', KEYS[1], 'state', 'until', 'failures', 'trial_until')
local state = h[1] or 'closed'
local open_until, failures, trial_until = tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or 0
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
local granted = 0
if op == 'failure' then
  failures = failures + count
  if state == 'half_open' then
    state, open_until = 'open', now + cooldown
  elseif state == 'closed' then
    local r, f = add(count, count)
    if failures >= max_failures or (r >= min_requests and f / r >= ratio) then
      state, open_until = 'open', now + cooldown
      redis.call('DEL', KEYS[2])
    end
  end
elseif op == 'success' then
  if state == 'half_open' then
    state, failures = 'closed', 0
    redis.call('DEL', KEYS[2])
  elseif state == 'closed' then
    failures = 0
    add(count, 0)
  end
elseif op == 'successes' then
  if state == 'closed' then add(count, 0) end
elseif op == 'trial' then
  if (state == 'open' and now >= open_until) or (state == 'half_open' and now >= trial_until) then
    state, trial_until, granted = 'half_open', now + cooldown, 1
  end
end
redis.call('HSET', KEYS[1], 'state', state, 'until', tostring(open_until), 'failures', failures,
           'trial_until', tostring(trial_until))
return {state, tostring(open_until), failures, granted, tostring(trial_until)}
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
        self._args = (config.failures, config.failure_ratio, config.min_requests, config.window_s,
                      config.cooldown_s)

    async def op(self, key: str, op: str, now: float, count: int = 1) -> tuple[View, bool]:
        return await self._layer.health.call(f"breaker_{op}", lambda: self._op(key, op, now, count),
                                             lambda: self._fallback.op(key, op, now, count), decides=op == "trial")

    async def _op(self, key: str, op: str, now: float, count: int) -> tuple[View, bool]:
        async with asyncio.timeout(_REDIS_OP_TIMEOUT_S):
            state, until, failures, granted, trial_until = await self._layer.script(
                _SCRIPT, [_key(key), _key(key) + ":w"], [op, repr(now), count, *self._args])
        return View(State(_text(state)), float(_text(until)), int(failures), float(_text(trial_until))), \
            bool(granted)

    async def read(self, keys: Iterable[str]) -> dict[str, View]:
        keys = list(keys)
        return await self._layer.health.call("breaker_read", lambda: self._read(keys),
                                             lambda: self._fallback.read(keys), decides=False)

    async def _read(self, keys: list[str]) -> dict[str, View]:
        async with asyncio.timeout(_REDIS_OP_TIMEOUT_S):
            async with self._layer.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(_key(key), "state", "until", "failures", "trial_until")
                rows = await pipe.execute()
        out: dict[str, View] = {}
        for key, (state, until, failures, trial_until) in zip(keys, rows, strict=True):
            out[key] = View(State(_text(state)) if state else State.CLOSED, float(_text(until or b"0")),
                            int(failures or 0), float(_text(trial_until or b"0")))
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


Listener = Callable[[str, State], None]


class Breakers:
    """The breakers of every deployment, by key (``alias/deployment``)."""

    def __init__(self, config: BreakerConfig, keys: Iterable[str], stores: StoreLayer | None = None,
                 on_change: Listener | None = None, clock: Clock = SYSTEM) -> None:
        """``stores``: the process's store layer; breakers share state through it when it has Redis."""
        self.config = config
        self.shared = stores is not None and stores.shared
        self._memory = None if self.shared else MemoryStore(config)
        self.store: Store = self._memory if self._memory is not None else RedisStore(config, stores)  # type: ignore[arg-type]  # shared: a layer
        self._views = {key: View() for key in keys}
        self._pending: dict[str, int] = {}   # Redis: successes not yet pushed
        self._on_change = on_change
        self._sync_task: asyncio.Task[None] | None = None
        self._clock = clock.time  # wall-clock: cool-downs are shared with other processes through Redis

    def closed(self, key: str) -> bool:
        """The hot path: no await, no store."""
        return not self.config.enabled or self._views[key].state is State.CLOSED

    def state(self, key: str) -> State:
        return self._views[key].state

    def view(self, key: str) -> View:
        return self._views[key]

    async def admit(self, key: str) -> bool:
        """Whether a request may go to this deployment now (an open breaker past its cool-down lets one
        trial through)."""
        if not self.config.enabled:
            return True
        view = self._views[key]
        if view.state is State.CLOSED:
            return True
        now = self._clock()
        if view.state is State.OPEN and now < view.open_until:
            return False
        if view.state is State.HALF_OPEN and now < view.trial_until:
            return False    # another request holds the trial: no store round trip per request meanwhile
        new, granted = await self.store.op(key, "trial", now)
        self._update(key, new)
        return granted

    async def success(self, key: str) -> None:
        if not self.config.enabled:
            return
        view = self._views[key]
        if view.state is State.CLOSED and view.failures == 0:
            if self._memory is not None:
                self._memory.count_success(key, self._clock())
            else:
                self._pending[key] = self._pending.get(key, 0) + 1   # pushed by the sync loop
            return
        new, _ = await self.store.op(key, "success", self._clock())
        self._update(key, new)

    async def failure(self, key: str) -> None:
        if not self.config.enabled:
            return
        new, _ = await self.store.op(key, "failure", self._clock())
        self._update(key, new)

    async def snapshot(self) -> dict[str, View]:
        """Fresh from the store (the admin API)."""
        views = await self.store.read(self._views)
        for key, view in views.items():
            self._update(key, view)
        return views

    def _update(self, key: str, new: View) -> None:
        old = self._views[key]
        self._views[key] = new
        if new.state is not old.state and self._on_change is not None:
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
        pending, self._pending = self._pending, {}
        now = self._clock()
        for key, count in pending.items():
            await self.store.op(key, "successes", now, count)
