"""Prometheus metrics of limits, budgets and the ledger (same registry as gateway/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REFUSED = Counter(
    "gateway_limit_refused_total",
    "Requests refused by a limit, by tenant and reason "
    "(requests, tokens, concurrency, queue_full, queue_timeout, too_large, budget)",
    ["tenant", "reason"],
)
QUEUED = Counter("gateway_queued_total", "Requests that waited in the queue", ["tenant"])
QUEUE_WAIT = Histogram(
    "gateway_queue_wait_seconds",
    "Time waited in the queue before admission or refusal",
    ["tenant"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUEUE_DEPTH = Gauge("gateway_queue_depth", "Requests waiting in the queue now", multiprocess_mode="livesum")
BUDGET_SOFT = Counter(
    "gateway_budget_soft_threshold_total",
    "Requests admitted past a budget's soft threshold",
    ["tenant", "budget"],
)
COST = Counter(
    "gateway_cost_usd_total", "USD charged to the ledger, by tenant and model alias", ["tenant", "alias"]
)
SETTLED = Counter(
    "gateway_ledger_settled_total",
    "Ledger records settled, by how (usage, counted, estimated, swept, duplicate)",
    ["how"],
)
STORE_ERRORS = Counter(
    "gateway_store_errors_total",
    "Redis store failures, by operation and the mode applied",
    ["operation", "mode"],
)
STORE_DEGRADED = Gauge(
    "gateway_store_degraded",
    "1 while Redis is unreachable and this process uses memory",
    multiprocess_mode="max",
)
CANARY_ROLLBACKS = Counter(
    "gateway_variant_canary_rollbacks_total",
    "Candidate variants rolled back by the canary watch, by reason (error_rate, latency)",
    ["alias", "variant", "reason"],
)
SHADOW_REQUESTS = Counter(
    "gateway_variant_shadow_requests_total",
    "Shadow requests mirrored to a variant, by outcome (ok, error, dropped)",
    ["alias", "variant", "outcome"],
)
SHADOW_LATENCY = Histogram(
    "gateway_variant_shadow_duration_seconds",
    "A shadow request's time to its whole answer",
    ["alias", "variant"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SHADOW_TOKENS = Counter(
    "gateway_variant_shadow_tokens_total",
    "Tokens of shadow answers, by kind (prompt, completion)",
    ["alias", "variant", "kind"],
)
SHADOW_COST = Counter(
    "gateway_variant_shadow_cost_usd_total", "USD ledgered for shadow requests", ["alias", "variant"]
)
SHADOW_SIMILARITY = Histogram(
    "gateway_variant_shadow_similarity",
    "Similarity of a shadow's text to the served answer's (1: the same)",
    ["alias", "variant"],
    buckets=(0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1),
)
