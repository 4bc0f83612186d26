"""Prometheus metrics. With several workers, each writes to PROMETHEUS_MULTIPROC_DIR and a scrape of
any worker sums them all (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from policies.breaker import State
from policies.resilience import Events
from policies.router import Route

from .config import GatewayConfig

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests answered, by tenant, model alias and HTTP status",
    ["tenant", "alias", "status"],
)
LATENCY = Histogram(
    "gateway_request_duration_seconds",
    "Time from request to the last byte of the answer",
    ["tenant", "alias"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "gateway_time_to_first_token_seconds",
    "Streams: time from request to the first chunk sent",
    ["tenant", "alias"],
    buckets=_LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "Time spent in the gateway itself, upstream excluded",
    buckets=_OVERHEAD_BUCKETS,
)
TOKENS = Counter(
    "gateway_tokens_total",
    "Tokens reported by upstreams, by kind (prompt or completion)",
    ["tenant", "alias", "kind"],
)
VARIANT_REQUESTS = Counter(
    "gateway_variant_requests_total",
    "Requests answered by a model alias's variant, by HTTP status",
    ["alias", "variant", "status"],
)
VARIANT_LATENCY = Histogram(
    "gateway_variant_request_duration_seconds",
    "Time from request to the last byte of the answer, by variant",
    ["alias", "variant"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_LINES = Counter(
    "gateway_batch_lines_total",
    "Batch lines answered (not in gateway_requests_total), by tenant, model alias and status",
    ["tenant", "alias", "status"],
)
BATCH_TOKENS = Counter(
    "gateway_batch_tokens_total",
    "Tokens of batch lines (not in gateway_tokens_total), by kind",
    ["tenant", "alias", "kind"],
)
BATCH_COST = Counter(
    "gateway_batch_cost_usd_total",
    "USD charged for batch lines at the batch price (a share of gateway_cost_usd_total)",
    ["tenant", "alias"],
)
VARIANT_TTFT = Histogram(
    "gateway_variant_time_to_first_token_seconds",
    "Streams: time to the first chunk sent, by variant",
    ["alias", "variant"],
    buckets=_LATENCY_BUCKETS,
)
VARIANT_TOKENS = Counter(
    "gateway_variant_tokens_total",
    "Tokens reported by upstreams, by variant and kind (prompt or completion)",
    ["alias", "variant", "kind"],
)
VARIANT_COST = Counter(
    "gateway_variant_cost_usd_total", "USD charged for requests a variant served", ["alias", "variant"]
)
VARIANT_CACHE_HITS = Counter(
    "gateway_variant_cache_hits_total", "Requests of a variant answered from the cache", ["alias", "variant"]
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total",
    "Failed upstream attempts by deployment and status",
    ["deployment", "status"],
)
IN_FLIGHT = Gauge("gateway_in_flight_requests", "Requests being handled now", multiprocess_mode="livesum")
DEPLOYMENT_ENABLED = Gauge(
    "gateway_deployment_enabled",
    "1 if the deployment can take requests",
    ["alias", "deployment"],
    multiprocess_mode="max",
)
CACHE_LOOKUPS = Counter(
    "gateway_cache_lookups_total",
    "Cache lookups by result (hit-exact, hit-semantic, miss)",
    ["tenant", "alias", "result"],
)
BUDGET_LIMIT = Gauge(
    "gateway_budget_limit_usd",
    "A tenant's budget from config, by period (daily, monthly): "
    "dashboards divide spend (gateway_cost_usd_total) by it",
    ["tenant", "period"],
    multiprocess_mode="max",
)
CACHE_SAVED = Counter(
    "gateway_cache_saved_usd_total", "Dollars cache hits saved: what the answers cost upstream", ["tenant"]
)

# Resilience (policies/resilience.py reports through ResilienceMetrics)
UPSTREAM_ATTEMPTS = Counter(
    "gateway_upstream_attempts_total",
    "Upstream attempts by deployment and status",
    ["alias", "deployment", "status"],
)
RETRIES = Counter("gateway_retries_total", "Retries (attempts after the first) by alias", ["alias"])
RETRY_BUDGET_EXHAUSTED = Counter(
    "gateway_retry_budget_exhausted_total",
    "Retries refused because the alias's retry budget was spent",
    ["alias"],
)
FALLBACKS = Counter(
    "gateway_fallbacks_total",
    "Requests handed to a fallback alias, by error class",
    ["alias", "to", "reason"],
)
BREAKER_STATE = Gauge(
    "gateway_breaker_state",
    "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open",
    ["deployment"],
    multiprocess_mode="livemostrecent",
)
BREAKER_TRANSITIONS = Counter(
    "gateway_breaker_transitions_total", "Circuit breaker state changes seen", ["deployment", "state"]
)
_BREAKER_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


class ResilienceMetrics(Events):
    def __init__(self) -> None:
        self._attempts: dict[tuple[str, str, int], Any] = {}  # labelled children: labels() is slow per call

    def attempt(self, route: Route, status: int) -> None:
        child = self._attempts.get((route.alias, route.id, status))
        if child is None:
            child = self._attempts[(route.alias, route.id, status)] = UPSTREAM_ATTEMPTS.labels(
                route.alias, route.id, str(status)
            )
        child.inc()

    def retry(self, alias: str) -> None:
        RETRIES.labels(alias).inc()

    def budget_exhausted(self, alias: str) -> None:
        RETRY_BUDGET_EXHAUSTED.labels(alias).inc()

    def fallback(self, alias: str, to: str, reason: str) -> None:
        FALLBACKS.labels(alias, to, reason).inc()

    def breaker(self, key: str, state: State) -> None:
        BREAKER_STATE.labels(key).set(_BREAKER_VALUES[state])
        BREAKER_TRANSITIONS.labels(key, str(state)).inc()


def publish_budgets(config: GatewayConfig) -> None:
    """Export each tenant's budget limits (its own or ``policies.budget``) for the dashboards' budget burn."""
    BUDGET_LIMIT.clear()  # a reload may have removed a tenant or a budget
    for tenant in config.tenants:
        budget = tenant.budget or config.policies.budget
        for period, limit in (("daily", budget.daily_usd), ("monthly", budget.monthly_usd)):
            if limit is not None:
                BUDGET_LIMIT.labels(tenant.name, period).set(limit)


# Labelled children looked up once per label set: labels() costs a lock and a dict build per call.
@functools.cache
def requests(tenant: str, alias: str, status: str) -> Any:
    return REQUESTS.labels(tenant, alias, status)


@functools.cache
def latency(tenant: str, alias: str) -> Any:
    return LATENCY.labels(tenant, alias)


@functools.cache
def ttft(tenant: str, alias: str) -> Any:
    return TTFT.labels(tenant, alias)


@functools.cache
def tokens(tenant: str, alias: str, kind: str) -> Any:
    return TOKENS.labels(tenant, alias, kind)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
