"""What admission keeps between requests, and the one interface both stores implement.

All of a request's counters (buckets, in-flight slots, budget spend) and its ledger reservation change in
one atomic step: a request is admitted by all of them or by none (a refused budget never eats a bucket's
tokens), and in Redis that step is one Lua script, one round trip. Settlement is the second step.
Money is counted in integer nano-dollars (1e-9 USD) so sums are exact.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..result import RequestResult, Tokens

NANO = 1_000_000_000

Outcome = Literal["ok", "bucket", "slot", "budget", "dup", "too_large"]


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    capacity: float
    rate: float  # refill per second
    cost: float  # taken at admission
    kind: str  # "requests" or "tokens": which x-ratelimit headers it answers for
    scope: str  # what it limits, for messages: "tenant", "key", "model chat"
    limit: int  # the per-minute figure from config


@dataclass(frozen=True, slots=True)
class Slot:
    key: str
    limit: int
    scope: str


@dataclass(frozen=True, slots=True)
class Spend:
    key: str
    limit: int | None  # nano-USD; None: counted, not limited
    soft: int | None
    ttl_s: int
    scope: str  # "tenant daily", "key monthly", ...


@dataclass(slots=True)
class Reservation:
    entry_id: str
    tenant: str
    key_id: str
    alias: str
    day: str  # UTC day the record and its aggregates belong to
    ts: float
    buckets: list[Bucket]
    slots: list[Slot]
    spends: list[Spend]
    est_prompt: int
    est_completion: int
    est_cost: int  # nano-USD, priced at the alias's dearest deployment
    lease_s: float  # unsettled this long: the sweeper settles it at its estimate
    variant: str | None = (
        None  # the alias's variant serving it: its own aggregates (``v:metric|alias|variant``)
    )
    batch: bool = (
        False  # a batch line's: its aggregates are also counted apart (``batch:metric|alias|key_id``)
    )
    # This admission's own id: the same reservation sent again (redis-py resends a command whose connection
    # failed, maybe after Redis ran it) is recognised as already admitted, not as another request's "dup".
    attempt: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reservation:
        data = dict(data)
        data["buckets"] = [Bucket(**b) for b in data["buckets"]]
        data["slots"] = [Slot(**s) for s in data["slots"]]
        data["spends"] = [Spend(**s) for s in data["spends"]]
        return cls(**data)


@dataclass(slots=True)
class AdmitResult:
    outcome: Outcome
    index: int = -1  # the bucket, slot or spend that refused
    retry_after: float = 0.0
    levels: list[float] = field(default_factory=list)  # each bucket's tokens after the step
    soft: list[int] = field(default_factory=list)  # spends now past their soft threshold
    store: str = "memory"  # which store answered (fail-open may fall back to memory)


@dataclass(slots=True)
class Settlement:
    reservation: Reservation
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: int  # nano-USD
    status: int
    latency_ms: float
    cache_hit: bool
    estimated: bool  # usage unknown (process died, stream cut without usage): charged at the estimate
    cache_write_tokens: int = 0  # of prompt_tokens, as cached_tokens (reads) are
    reasoning_tokens: int = 0  # of completion_tokens

    @classmethod
    def of(cls, reservation: Reservation, result: RequestResult, latency_ms: float = 0.0) -> Settlement:
        """The store's step for ``result``: its record, the budget spend and the buckets' refund."""
        t = result.tokens
        return cls(
            reservation=reservation,
            deployment=result.deployment,
            prompt_tokens=t.prompt,
            completion_tokens=t.completion,
            cached_tokens=t.cached,
            cost=result.cost,
            status=result.status,
            latency_ms=latency_ms,
            cache_hit=result.cache_hit,
            estimated=result.estimated,
            cache_write_tokens=t.cache_write,
            reasoning_tokens=t.reasoning,
        )

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def record(self) -> dict[str, Any]:
        r = self.reservation
        return {
            "request_id": r.entry_id,
            "tenant": r.tenant,
            "key_id": r.key_id,
            "alias": r.alias,
            "deployment": self.deployment,
            "day": r.day,
            "ts": r.ts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_nusd": self.cost,
            "cache_hit": self.cache_hit,
            "latency_ms": self.latency_ms,
            "status": self.status,
            "state": "estimated" if self.estimated else "settled",
            "source": "batch" if r.batch else "live",
        }

    def aggregates(self) -> dict[str, int]:
        """The per-day counters this record adds to, by ``metric|alias|key_id``; a batch line's also again as
        ``batch:metric|alias|key_id`` (usage grouped by source tells batch spend from live)."""
        r = self.reservation
        suffix = f"|{r.alias}|{r.key_id}"
        counters = {
            "requests" + suffix: 1,
            "prompt_tokens" + suffix: self.prompt_tokens,
            "completion_tokens" + suffix: self.completion_tokens,
            "cached_tokens" + suffix: self.cached_tokens,
            "cache_write_tokens" + suffix: self.cache_write_tokens,
            "reasoning_tokens" + suffix: self.reasoning_tokens,
            "cost_nusd" + suffix: self.cost,
            "cache_hits" + suffix: int(self.cache_hit),
            "errors" + suffix: int(self.status >= 400),
            "estimated" + suffix: int(self.estimated),
        }
        plain = dict(counters)
        if r.variant is not None:  # a second set, by variant: readers of ``metric|alias|key_id`` skip ``v:``
            by_variant = f"|{r.alias}|{r.variant}"
            counters.update(
                {"v:" + name.split("|", 1)[0] + by_variant: value for name, value in plain.items()}
            )
        if r.batch:  # and a third, of batch lines (usage by source)
            counters.update({"batch:" + name: value for name, value in plain.items()})
        return counters


def settle_at_estimate(reservation: Reservation, status: int = 0) -> Settlement:
    r = reservation
    return Settlement.of(
        r,
        RequestResult(
            status=status,
            deployment="-",
            tokens=Tokens(r.est_prompt, r.est_completion),
            cost=r.est_cost,
            how="estimated",
        ),
    )


class Store(Protocol):
    """Limits, budgets and the ledger: in this process's memory, or in Redis shared by every process."""

    name: str

    async def admit(self, reservation: Reservation) -> AdmitResult:
        """Take every bucket's cost, a slot of every in-flight limit and the estimate from every budget, and
        write the ledger reservation, all at once; or change nothing and say what refused."""
        ...

    async def settle(self, settlement: Settlement) -> bool:
        """Settle a reservation once: refund or charge the token buckets, free the slots, move the estimate
        to spent, write the record and the day's aggregates. False when it was settled already."""
        ...

    async def sweep(self, tenants: list[str]) -> int:
        """Settle, at their estimate, reservations left open past their lease (their process died)."""
        ...

    async def aggregates(self, tenant: str, days: list[str]) -> dict[str, dict[str, int]]:
        """day -> ``metric|alias|key_id`` -> total."""
        ...

    async def records(self, tenant: str, start: float, end: float, limit: int) -> list[dict[str, Any]]: ...

    async def spent(self, key: str) -> tuple[int, int]:
        """(spent, reserved) nano-USD of one budget key."""
        ...

    async def acquire(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        """Take one of ``limit`` slots of ``key`` (a deployment's in-flight cap) for ``holder``."""
        ...

    async def release(self, key: str, holder: str) -> None: ...

    async def close(self) -> None: ...
