"""Canary watch: a candidate variant (``variants.NAME.canary``) is compared with its stable variant over a
sliding window, and rolled back (its weight set to 0, recorded in the variant history) when it does worse.

The outcomes are the ones the circuit breakers count (policies/resilience.py): each upstream attempt for the
alias's own variant (not a fallback alias), a failure being an error whose status the breaker does not
ignore, a success a whole answer or a stream that reached its end; the latency is the one the router's
latency EWMA takes (to the whole answer, or to a stream's first chunk). The candidate is rolled back when,
with at least ``min_requests`` outcomes of each variant in the last ``window_s``:

    error rate:  candidate's failures / outcomes  >  stable's + ``error_rate_margin``
    latency:     candidate's p95 (of successes)   >  stable's p95 x (1 + ``latency_margin``)
                 and the two differ by more than ``latency_floor_s`` (jitter of fast answers is no regression)

Each process judges its own outcomes; the rollback it makes goes through the variant history, so every
process applies it (variant_history.py polls for changes).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from .clock import Clock
from .variants import CanaryConfig, Variants

_MAX_SAMPLES = 4096  # per variant: the window's newest outcomes (p95 is sorted from these on each check)


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: str  # error_rate | latency
    figures: dict[str, Any]  # both variants' counts, error rates and p95s, and the margin that tripped


def p95(latencies: list[float]) -> float | None:
    """The 95th percentile (nearest rank) of ``latencies``; None for none."""
    if not latencies:
        return None
    ordered = sorted(latencies)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


def judge(
    config: CanaryConfig, candidate: list[tuple[float, bool, float]], stable: list[tuple[float, bool, float]]
) -> Verdict | None:
    """A rollback verdict for the candidate's window against the stable's, or None (too few, or no worse)."""
    if len(candidate) < config.min_requests or len(stable) < config.min_requests:
        return None
    c_errors = sum(1 for _, ok, _ in candidate if not ok) / len(candidate)
    s_errors = sum(1 for _, ok, _ in stable if not ok) / len(stable)
    c_p95 = p95([latency for _, ok, latency in candidate if ok])
    s_p95 = p95([latency for _, ok, latency in stable if ok])
    figures: dict[str, Any] = {
        "candidate": {
            "outcomes": len(candidate),
            "error_rate": round(c_errors, 4),
            "p95_s": None if c_p95 is None else round(c_p95, 4),
        },
        "stable": {
            "outcomes": len(stable),
            "error_rate": round(s_errors, 4),
            "p95_s": None if s_p95 is None else round(s_p95, 4),
        },
        "window_s": config.window_s,
    }
    if c_errors > s_errors + config.error_rate_margin:
        return Verdict("error_rate", {**figures, "error_rate_margin": config.error_rate_margin})
    if (
        c_p95 is not None
        and s_p95 is not None
        and c_p95 > s_p95 * (1 + config.latency_margin)
        and c_p95 - s_p95 > config.latency_floor_s
    ):
        return Verdict("latency", {**figures, "latency_margin": config.latency_margin})
    return None


Rollback = Callable[[str, str, Verdict], Awaitable[None]]


class CanaryWatch:
    """Windows of outcomes per (alias, variant); ``rollback(alias, candidate, verdict)`` when one trips."""

    def __init__(self, variants: Variants, clock: Clock, rollback: Rollback) -> None:
        self._variants = variants
        self._clock = clock
        self._rollback = rollback
        self._windows: dict[tuple[str, str], deque[tuple[float, bool, float]]] = {}
        self._rolling: set[tuple[str, str]] = set()
        self._since: dict[
            tuple[str, str], int
        ] = {}  # (alias, candidate) -> outcomes since it was last judged
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = structlog.get_logger("gateway.canary")

    def observe(self, alias: str, variant: str, ok: bool, latency_s: float) -> None:
        """One outcome of ``alias``'s ``variant`` (resilience calls this where it tells the breaker)."""
        configs = self._variants.configs(alias)
        if variant not in configs or not any(v.canary is not None for v in configs.values()):
            return  # no canary here, or a shadow request (variant ``shadow:NAME``)
        now = self._clock.monotonic()
        window = self._windows.get((alias, variant))
        if window is None:
            window = self._windows[(alias, variant)] = deque(maxlen=_MAX_SAMPLES)
        window.append((now, ok, latency_s))
        for name, config in configs.items():
            canary = config.canary
            if (
                canary is None
                or config.weight <= 0
                or variant not in (name, canary.stable)
                or (alias, name) in self._rolling
            ):
                continue
            since = self._since[(alias, name)] = self._since.get((alias, name), 0) + 1
            candidate = self._windows.get((alias, name)) or ()
            stable = self._windows.get((alias, canary.stable)) or ()
            # Judged again once 1/64 of the two windows is new: a p95 sorts the windows, which on every
            # outcome would cost a millisecond at 4,096 outcomes; this way a few microseconds, and a verdict
            # comes at most 1.6% of the window late.
            if since < (len(candidate) + len(stable)) // 64:
                continue
            self._since[(alias, name)] = 0
            verdict = judge(
                canary,
                self._recent(alias, name, now, canary.window_s),
                self._recent(alias, canary.stable, now, canary.window_s),
            )
            if verdict is not None:
                self._start_rollback(alias, name, verdict)

    def _recent(
        self, alias: str, variant: str, now: float, window_s: float
    ) -> list[tuple[float, bool, float]]:
        window = self._windows.get((alias, variant))
        if not window:
            return []
        while window and window[0][0] < now - window_s:
            window.popleft()
        return list(window)

    def _start_rollback(self, alias: str, candidate: str, verdict: Verdict) -> None:
        self._rolling.add((alias, candidate))
        task = asyncio.get_running_loop().create_task(self._roll_back(alias, candidate, verdict))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _roll_back(self, alias: str, candidate: str, verdict: Verdict) -> None:
        try:
            await self._rollback(alias, candidate, verdict)
            self._windows.pop((alias, candidate), None)  # a later canary of it starts from a clean window
        except Exception:  # the store failed: the next outcome judges again
            self._log.exception("canary rollback failed", alias=alias, variant=candidate)
        finally:
            self._rolling.discard((alias, candidate))

    def windows(self, alias: str) -> dict[str, dict[str, Any]]:
        """Each variant's outcomes in its canary window now (the admin API's stats)."""
        now = self._clock.monotonic()
        configs = self._variants.configs(alias)
        spans = {config.canary.stable: config.canary.window_s for config in configs.values() if config.canary}
        spans.update({name: config.canary.window_s for name, config in configs.items() if config.canary})
        out = {}
        for name, window_s in spans.items():
            recent = self._recent(alias, name, now, window_s)
            latency = p95([latency for _, ok, latency in recent if ok])
            out[name] = {
                "outcomes": len(recent),
                "errors": sum(1 for _, ok, _ in recent if not ok),
                "p95_s": None if latency is None else round(latency, 4),
                "window_s": window_s,
            }
        return out

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
