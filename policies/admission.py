"""Admission: budget, rate limits and queueing, concurrency; the ledger's reservation and settlement.

``admit(call)`` plans the request's buckets (tenant, key, tenant x alias), in-flight slots and budget
spends, estimates its tokens and cost, and takes them all in one atomic store step that also writes the
ledger reservation. Refused by a bucket or an in-flight limit, the request waits in the fair queue up to
the tenant's ``max_wait_s``, else gets 429 with ``Retry-After``; refused by a budget, 429
``insufficient_quota``. Leaving the context settles what the request used, off the response's path.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from backends import spans
from errors import GatewayError, QuotaExceeded, RateLimited

from . import bucket, budget, metrics, tokens
from .call import Call
from .clock import SYSTEM, Clock
from .config import PRIORITIES, Limits, PolicyDefaults, StoresConfig, TenantPolicyFields
from .cost import UNPRICED, PriceTable, usd
from .queue import FairQueue, QueueFull
from .result import NO_TOKENS, How, RequestResult, Tokens, nothing_ran
from .stores.base import AdmitResult, Bucket, Reservation, Settlement, Slot, Spend, Store
from .stores.failover import FailoverStore
from .stores.layer import StoreLayer
from .stores.memory import MemoryStore
from .stores.redis import RedisStore, tag

PRIORITY_HEADER = "x-gateway-priority"
_CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class AliasPolicy:
    """What admission needs to know of a model alias, built from its deployments at start."""

    encoding: Any | None = None  # the tokenizer of its first deployment's model, when known
    max_price: PriceTable = UNPRICED  # the dearest of its deployments: what a reservation is priced at
    count_streams: bool = False  # some deployment does not report stream usage: count it


_NO_ALIAS = AliasPolicy()
_QUEUED = AdmitResult("bucket")
_StaticPlan = tuple[list[Bucket], list[Bucket], list[Slot], list[Spend]]


@dataclass(frozen=True, slots=True)
class _Rules:
    prefix: str
    limits: Limits
    key_limits: Limits
    model_limits: Mapping[str, Limits]
    budget: Any
    key_budget: Any
    max_wait_s: float
    priority: str
    weight: float
    per_key: Mapping[str, Any]
    precise: bool  # a token bucket or a budget needs the real prompt count

    @classmethod
    def of(cls, name: str, fields: TenantPolicyFields, defaults: PolicyDefaults) -> _Rules:
        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        limits = pick(fields.limits, defaults.limits)
        key_limits = pick(fields.key_limits, defaults.key_limits)
        model_limits = pick(fields.model_limits, defaults.model_limits)
        tenant_budget = pick(fields.budget, defaults.budget)
        key_budget = pick(fields.key_budget, defaults.key_budget)
        precise = (
            any(x.tpm is not None for x in (limits, key_limits, *model_limits.values()))
            or any(p.limits is not None and p.limits.tpm is not None for p in fields.per_key.values())
            or not (
                tenant_budget.empty
                and key_budget.empty
                and all(p.budget is None for p in fields.per_key.values())
            )
        )
        return cls(
            prefix=f"gw:{tag(name)}",
            limits=limits,
            key_limits=key_limits,
            model_limits=model_limits,
            budget=tenant_budget,
            key_budget=key_budget,
            max_wait_s=pick(fields.max_wait_s, defaults.max_wait_s),
            priority=pick(fields.priority, defaults.priority),
            weight=fields.weight,
            per_key=fields.per_key,
            precise=precise,
        )


@dataclass(slots=True)
class _Admitted:
    reservation: Reservation
    store: Store
    started: float = field(default_factory=time.perf_counter)


class Admission:
    def __init__(
        self,
        tenants: Mapping[str, TenantPolicyFields] | None = None,
        defaults: PolicyDefaults | None = None,
        stores: StoresConfig | None = None,
        aliases: Mapping[str, AliasPolicy] | None = None,
        prices: Mapping[str, PriceTable] | None = None,
        layer: StoreLayer | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        """``layer``: the process's store layer (its client and failure policy); none: this process's memory.
        ``stores``: the ``stores:`` config read here (leases, sweeping, retention); the layer's by default."""
        self.clock = clock  # days, ledger timestamps and the stores' time
        self.defaults = defaults or PolicyDefaults()
        self._own_layer = layer is None
        self.layer = layer or StoreLayer(stores)
        self.stores = stores or self.layer.config
        self._rules = {
            name: _Rules.of(name, fields, self.defaults) for name, fields in (tenants or {}).items()
        }
        self._configured = dict(self._rules)
        self._fallback_rules = _Rules.of("-", TenantPolicyFields(), self.defaults)
        self._aliases = dict(aliases or {})
        self._prices = dict(prices or {})
        self._plans: dict[tuple[str, str, str, str], _StaticPlan] = {}
        self._log = structlog.get_logger("gateway")
        self._warned: set[str] = set()
        self._pending: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.store: Store = self._build_store()
        self.queue: FairQueue | None = None

    def _build_store(self) -> Store:
        memory = MemoryStore(
            retention_days=self.stores.retention_days,
            max_records=self.stores.memory_max_records,
            clock=self.clock.time,
        )
        if not self.layer.shared:
            return memory
        return FailoverStore(
            RedisStore(self.layer, retention_days=self.stores.retention_days, clock=self.clock),
            memory,
            self.layer.health,
        )

    @property
    def tenants(self) -> list[str]:
        return list(self._rules)

    def set_runtime_tenants(self, tenants: Mapping[str, TenantPolicyFields]) -> None:
        """The tenants made at runtime (the gateway's control plane), beside the configured ones, which win a
        name clash; replaces the previous runtime set."""
        runtime = {name: _Rules.of(name, fields, self.defaults) for name, fields in tenants.items()}
        self._rules = {**runtime, **self._configured}
        self._plans.clear()

    @property
    def counts_tokens(self) -> bool:
        """Whether any tenant's rules need real prompt counts (a token bucket or a budget somewhere)."""
        return self._fallback_rules.precise or any(rules.precise for rules in self._rules.values())

    def encoding(self, alias: str) -> Any | None:
        """The tokenizer ``alias``'s deployments share, where one was loaded (``use_encodings``), else None."""
        policy = self._aliases.get(alias)
        return policy.encoding if policy is not None else None

    def use_encodings(self, encodings: Mapping[str, Any]) -> None:
        """Count with these tokenizers, by alias (set at start-up, before any request)."""
        self._aliases = {
            name: replace(policy, encoding=encodings.get(name)) for name, policy in self._aliases.items()
        }

    async def start(self) -> None:
        if self._own_layer:
            await self.layer.open()
        loop = asyncio.get_running_loop()
        self.queue = FairQueue(
            self.defaults.queue.max_size, self.defaults.queue.max_per_tenant, depth=metrics.QUEUE_DEPTH.inc
        )
        self._sweeper = loop.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        if self.queue is not None:
            await self.queue.close()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.store.close()
        if self._own_layer:
            await self.layer.close()

    async def settled(self) -> None:
        """Waits until every finished request's settlement is written (they run after the response)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def sweep(self) -> int:
        """Settle, at their estimate, reservations whose process died before settling them."""
        settled = await self.store.sweep(self.tenants)
        if settled:
            metrics.SETTLED.labels("swept").inc(settled)
            self._log.warning("settled abandoned reservations at their estimate", count=settled)
        return settled

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.stores.sweep_interval_s)
            try:
                await self.sweep()
            except GatewayError as exc:
                self._log.warning("ledger sweep failed", error=exc.message)
            except Exception:  # the sweeper must outlive any one failure
                self._log.exception("ledger sweep failed")

    @asynccontextmanager
    async def admit(self, call: Call) -> AsyncIterator[None]:
        """Wait for (or refuse) the request's place; on exit settle what it used."""
        admitted = await self._admit(call)
        alias = self._aliases.get(call.alias)
        if call.stream and alias is not None and alias.count_streams and call.collected is None:
            call.collected = []  # the stream may end without usage: its text is counted then
        status: int | None = None
        try:
            yield
        except asyncio.CancelledError:
            status = _CLIENT_CLOSED
            raise
        except GatewayError as exc:
            status = exc.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            settlement = self._settlement(call, admitted, status)
            task = asyncio.get_running_loop().create_task(self._settle(admitted.store, settlement))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def charge_work(
        self, tenant: str, key_id: str, alias: str, entry_id: str, tokens: int, cost: int
    ) -> bool:
        """Records work done outside a request (a fine-tuning job's tokens trained, ``cost`` nano-USD) in the
        ledger, once per ``entry_id``, and against the tenant's and key's budgets, which it may take past their
        limit: the work is already done. False when that entry was recorded already."""
        rules = self._rules.get(tenant, self._fallback_rules)
        now = self.clock.time()
        day, month = budget.today(now)
        spends = _uncapped(_budget_spends(rules, key_id, day, month))
        reservation = Reservation(
            entry_id=entry_id,
            tenant=tenant,
            key_id=key_id,
            alias=alias,
            day=day,
            ts=now,
            buckets=[],
            slots=[],
            spends=spends,
            est_prompt=tokens,
            est_completion=0,
            est_cost=cost,
            lease_s=self.stores.settle_after_s,
        )
        if (await self.store.admit(reservation)).outcome == "dup":
            return False
        await self._settle(
            self.store,
            Settlement(
                reservation=reservation,
                deployment="fine-tuning",
                prompt_tokens=tokens,
                completion_tokens=0,
                cached_tokens=0,
                cost=cost,
                status=200,
                latency_ms=0.0,
                cache_hit=False,
                estimated=False,
            ),
        )
        return True

    async def charge(self, call: Call) -> None:
        """Ledgers a request answered outside the pipeline (a line of a provider's own batch, its usage and
        deployment on ``call.record``): charged to the budgets and the ledger as settled, refused by no limit
        (the upstream did the work already)."""
        rules = self._rules.get(call.tenant, self._fallback_rules)
        reservation = await self._plan(call, rules)
        reservation.buckets, reservation.slots = [], []
        reservation.spends = _uncapped(reservation.spends)
        result = await self.store.admit(reservation)
        if result.outcome == "dup":  # charged already (the same line's results read twice)
            return
        await self._settle(self.store, self._settlement(call, _Admitted(reservation, self.store), None))

    async def record_only(self, call: Call, status: int, started: float) -> None:
        """Ledgers a finished request that no limit or budget counts (a shadow request, policies/shadow.py):
        its record and aggregates, priced as any other; ``started``: its ``time.perf_counter()`` start."""
        now = self.clock.time()
        reservation = Reservation(
            entry_id=call.record.request_id,
            tenant=call.tenant,
            key_id=call.key_id,
            alias=call.alias,
            variant=call.variant,
            day=budget.today(now)[0],
            ts=now,
            buckets=[],
            slots=[],
            spends=[],
            est_prompt=0,
            est_completion=0,
            est_cost=0,
            lease_s=self.stores.settle_after_s,
        )
        result = await self.store.admit(reservation)
        if result.outcome == "dup":
            reservation.entry_id = f"{reservation.entry_id}.{uuid.uuid4().hex[:8]}"
            await self.store.admit(reservation)
        await self._settle(
            self.store, self._settlement(call, _Admitted(reservation, self.store, started), status)
        )

    async def _admit(self, call: Call) -> _Admitted:
        rules = self._rules.get(call.tenant, self._fallback_rules)
        loop = asyncio.get_running_loop()
        until = loop.time() + rules.max_wait_s  # the bound holds from the request's arrival, queued once
        reservation = await self._plan(call, rules)
        waited = False
        if rules.max_wait_s > 0 and self.queue is not None and self.queue.waiting(call.tenant):
            # the tenant's earlier (or higher-priority) requests are waiting: no overtaking them
            result = await self._wait(call, rules, reservation, _QUEUED, until - loop.time())
            waited = True
        else:
            result = await self.store.admit(reservation)
        if result.outcome == "dup":  # a client reused a request id: the ledger entry gets its own
            reservation.entry_id = f"{reservation.entry_id}.{uuid.uuid4().hex[:8]}"
            result = await self.store.admit(reservation)
        if (
            not waited
            and result.outcome in ("bucket", "slot")
            and rules.max_wait_s > 0
            and self.queue is not None
            and (result.outcome == "slot" or result.retry_after <= rules.max_wait_s)
        ):
            result = await self._wait(call, rules, reservation, result, until - loop.time())
        if result.outcome != "ok":
            raise self._refusal(call, reservation, result)
        for index in result.soft:
            spend = reservation.spends[index]
            metrics.BUDGET_SOFT.labels(call.tenant, spend.scope).inc()
            if spend.key not in self._warned:
                self._warned.add(spend.key)
                self._log.warning(
                    "budget soft threshold reached",
                    tenant=call.tenant,
                    key_id=call.key_id,
                    budget=spend.scope,
                    limit_usd=usd(spend.limit or 0),
                )
        if reservation.buckets:
            call.record.limited(bucket.headers(reservation.buckets, result.levels))
        return _Admitted(reservation, self.store)  # a fail-open store knows which store admitted it

    async def _wait(
        self, call: Call, rules: _Rules, reservation: Reservation, refused: AdmitResult, max_wait_s: float
    ) -> AdmitResult:
        assert self.queue is not None
        priority = self._priority(call, rules)
        metrics.QUEUED.labels(call.tenant).inc()
        started = time.perf_counter()
        span = spans.start("queue")
        try:
            return await self.queue.wait(
                call.tenant,
                rules.weight,
                priority,
                max(max_wait_s, 0.0),
                lambda: self.store.admit(reservation),
                refused,
                lambda result: self._give_back(reservation, result),
            )
        except QueueFull:
            metrics.REFUSED.labels(call.tenant, "queue_full").inc()
            raise RateLimited(
                "Too many requests are waiting for this tenant; please retry later.",
                headers={"Retry-After": str(_retry_after(refused))},
            ) from None
        finally:
            spans.end(span)
            metrics.QUEUE_WAIT.labels(call.tenant).observe(time.perf_counter() - started)

    def _priority(self, call: Call, rules: _Rules) -> int:
        key_policy = rules.per_key.get(call.key_id)
        allowed = PRIORITIES.index(
            (key_policy.priority if key_policy and key_policy.priority else None) or rules.priority
        )
        asked = call.headers.get(PRIORITY_HEADER)
        if asked in PRIORITIES:
            return max(PRIORITIES.index(asked), allowed)  # a request may lower its class, never raise it
        return allowed

    async def _plan(self, call: Call, rules: _Rules) -> Reservation:
        alias = self._aliases.get(call.alias, _NO_ALIAS)
        encoding = alias.encoding if rules.precise else None
        prompt = await tokens.count_prompt(call.endpoint, call.body, encoding)
        if rules.precise and encoding is None:
            prompt = tokens.reserve_estimate(prompt)
        now = self.clock.time()
        day, month = budget.today(now)
        static = self._plans.get((call.tenant, call.key_id, call.alias, day))
        if static is None:
            if len(self._plans) > 10_000:
                self._plans.clear()
            static = self._plans[(call.tenant, call.key_id, call.alias, day)] = self._static_plan(
                call, rules, day, month
            )
        fixed, per_token, held, spends = static
        completion = 0
        choices = tokens.choices(call.endpoint, call.body)
        if choices:
            asked = tokens.completion_limit(call.body)
            per_choice = asked or self.defaults.default_max_tokens
            if asked is None and per_token:
                # No max_tokens: reserve what fits in the bucket beside the prompt (a prompt that does not fit
                # alone is too large); the upstream is then held to it below.
                room = min(b.capacity for b in per_token) - prompt
                per_choice = max(1, min(per_choice, int(room) // choices))
            if asked is None and rules.precise:
                # The upstream may generate no more than was reserved (limits and budgets count on it).
                call.body[tokens.limit_field(call.endpoint)] = per_choice
            completion = per_choice * choices
        total = float(prompt + completion)
        planned = list(fixed)
        planned += [Bucket(b.key, b.capacity, b.rate, total, b.kind, b.scope, b.limit) for b in per_token]
        return Reservation(
            entry_id=call.record.request_id,
            tenant=call.tenant,
            key_id=call.key_id,
            alias=call.alias,
            variant=call.variant,
            day=day,
            ts=now,
            buckets=planned,
            slots=held,
            spends=spends,
            est_prompt=prompt,
            est_completion=completion,
            est_cost=alias.max_price.nano(prompt, completion),
            lease_s=self.stores.settle_after_s,
            batch=call.batch,
        )

    def _static_plan(self, call: Call, rules: _Rules, day: str, month: str) -> _StaticPlan:
        """What a request of this tenant, key and alias draws on, but for its token count."""
        key_policy = rules.per_key.get(call.key_id)
        key_limits = key_policy.limits if key_policy and key_policy.limits else rules.key_limits
        key_prefix = f"{rules.prefix}:k:{call.key_id}"
        alias_prefix = f"{rules.prefix}:m:{call.alias}"
        scoped = [(rules.limits, rules.prefix, "tenant"), (key_limits, key_prefix, "key")]
        model_limits = rules.model_limits.get(call.alias)
        if model_limits is not None:
            scoped.append((model_limits, alias_prefix, f"model {call.alias}"))
        planned = [
            b for limits, prefix, scope in scoped for b in bucket.buckets(limits, prefix, scope, 0, True)
        ]
        held = [s for limits, prefix, scope in scoped for s in bucket.slots(limits, prefix, scope)]
        spends = _budget_spends(rules, call.key_id, day, month)
        return (
            [b for b in planned if b.kind == "requests"],
            [b for b in planned if b.kind == "tokens"],
            held,
            spends,
        )

    def _refusal(self, call: Call, reservation: Reservation, result: AdmitResult) -> GatewayError:
        if result.outcome == "budget":
            spend = reservation.spends[result.index]
            metrics.REFUSED.labels(call.tenant, "budget").inc()
            return QuotaExceeded(
                f"You exceeded your current quota: the {spend.scope} budget of ${usd(spend.limit or 0):.2f} "
                "is spent (or this request's estimate would pass it). It resets with the next budget period."
            )
        if result.index < 0:  # timed out in the queue before its first try
            metrics.REFUSED.labels(call.tenant, "queue_timeout").inc()
            return RateLimited(
                f"The request waited {self._rules.get(call.tenant, self._fallback_rules).max_wait_s:g} "
                "s in the queue without being admitted; please retry later.",
                headers={"Retry-After": "1"},
            )
        if result.outcome == "slot":
            slot = reservation.slots[result.index]
            metrics.REFUSED.labels(call.tenant, "concurrency").inc()
            return RateLimited(
                f"Too many requests in flight for {slot.scope} ({call.tenant}): limit "
                f"{slot.limit}. Please retry when one finishes.",
                headers={"Retry-After": "1"},
            )
        planned = reservation.buckets[result.index]
        headers = bucket.headers(reservation.buckets, result.levels) if result.levels else {}
        unit = "RPM" if planned.kind == "requests" else "TPM"
        kind = f"{planned.kind} per min ({unit})"
        if result.outcome == "too_large":
            metrics.REFUSED.labels(call.tenant, "too_large").inc()
            return RateLimited(
                f"Request too large for {planned.scope} ({call.tenant}) on {kind}: Limit "
                f"{planned.limit}, Requested {int(planned.cost)}. Lower max_tokens or the prompt.",
                error_type="tokens",
                headers=headers,
            )
        metrics.REFUSED.labels(call.tenant, planned.kind).inc()
        wait = _retry_after(result)
        level = result.levels[result.index] if result.levels else 0.0
        return RateLimited(
            f"Rate limit reached for {planned.scope} ({call.tenant}) on {kind}: Limit {planned.limit}, "
            f"Remaining {max(math.floor(level), 0)}, Requested {int(planned.cost)}. "
            f"Please try again in {bucket.duration(result.retry_after)}.",
            error_type=planned.kind,
            headers={**headers, "Retry-After": str(wait)},
        )

    def _settlement(self, call: Call, admitted: _Admitted, status: int | None) -> Settlement:
        result = self._result(call, admitted.reservation, status)
        if result.cost:
            call.record.priced(usd(result.cost))
        metrics.SETTLED.labels(result.how).inc()
        latency_ms = round((time.perf_counter() - admitted.started) * 1000, 3)
        return Settlement.of(admitted.reservation, result, latency_ms)

    def _result(self, call: Call, reservation: Reservation, status: int | None) -> RequestResult:
        """What the request ended with, read once from what the layers reported on its record: the one
        value its settlement (ledger record, budget spend, bucket refund) is made from."""
        record = call.record
        final = status if status is not None else (record.status or 200)
        deployment = record.deployment or "-"
        if record.cache and record.cache.startswith("hit"):
            return RequestResult(final, deployment, NO_TOKENS, 0, "cache", cache_hit=True)
        used: Tokens = NO_TOKENS
        how: How = "usage"
        if record.prompt_tokens is not None or record.completion_tokens is not None:
            used = Tokens(
                record.prompt_tokens or 0,
                record.completion_tokens or 0,
                record.cached_tokens or 0,
                record.cache_write_tokens or 0,
                record.reasoning_tokens or 0,
            )
        elif record.deployment is not None and call.collected:
            alias = self._aliases.get(call.alias, _NO_ALIAS)
            used = Tokens(reservation.est_prompt, tokens.count_completion(call.collected, alias.encoding))
            how = "counted"
        elif record.deployment is not None and (final < 400 or final == _CLIENT_CLOSED):
            # answered (or cut off) without usage: the upstream may bill it, so it is charged at the estimate
            used, how = Tokens(reservation.est_prompt, reservation.est_completion), "estimated"
        price = (
            call.price or self._prices.get(deployment) or self._aliases.get(call.alias, _NO_ALIAS).max_price
        )
        cost = (
            reservation.est_cost
            if how == "estimated"
            else price.nano(used.prompt, used.completion, used.cached, used.cache_write)
        )
        if call.batch:
            cost = round(cost * (1 - price.batch_discount))
        return RequestResult(final, deployment, used, cost, how)

    async def _settle(self, store: Store, settlement: Settlement) -> None:
        try:
            settled = await store.settle(settlement)
        except GatewayError as exc:
            self._log.warning(
                "settlement deferred to the sweeper",
                request_id=settlement.reservation.entry_id,
                error=exc.message,
            )
            return
        except Exception:
            self._log.exception(
                "settlement failed; the sweeper settles it at its estimate",
                request_id=settlement.reservation.entry_id,
            )
            return
        if not settled:
            metrics.SETTLED.labels("duplicate").inc()
        elif settlement.cost:
            metrics.COST.labels(settlement.reservation.tenant, settlement.reservation.alias).inc(
                usd(settlement.cost)
            )
        if settlement.reservation.slots and self.queue is not None:
            self.queue.slot_freed()

    def _give_back(self, reservation: Reservation, result: AdmitResult) -> None:
        """A waiter admitted just as its client left: nothing ran, so nothing is charged."""
        del result
        nothing = Settlement.of(reservation, nothing_ran(_CLIENT_CLOSED))
        task = asyncio.get_running_loop().create_task(self._settle(self.store, nothing))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def _retry_after(result: AdmitResult) -> int:
    return max(1, math.ceil(result.retry_after))


def _budget_spends(rules: _Rules, key_id: str, day: str, month: str) -> list[Spend]:
    """What a request of this key spends: the tenant's budget and the key's own (or the tenants' default for
    its keys)."""
    key_policy = rules.per_key.get(key_id)
    key_budget = key_policy.budget if key_policy and key_policy.budget else rules.key_budget
    spends = budget.spends(rules.budget, rules.prefix, "tenant", day, month)
    return spends + budget.spends(key_budget, f"{rules.prefix}:k:{key_id}", "key", day, month)


def _uncapped(spends: list[Spend]) -> list[Spend]:
    """The same spends with no limit: work already done is charged even past the budget."""
    return [replace(s, limit=None, soft=None) for s in spends]
