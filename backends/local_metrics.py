"""Prometheus metrics of in-process local engines, one label per deployment.

Registered only when a local deployment exists (backends/local.py imports this module), so a gateway
without one shows none of them. With several workers each worker runs its own engine: gauges of
sizes and rates are summed across workers (``livesum``), counters and histograms add up.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

RUNNING = Gauge(
    "gateway_local_engine_running_sequences",
    "Sequences being decoded",
    ["deployment"],
    multiprocess_mode="livesum",
)
WAITING = Gauge(
    "gateway_local_engine_waiting_sequences",
    "Sequences queued for admission",
    ["deployment"],
    multiprocess_mode="livesum",
)
KV_USED = Gauge(
    "gateway_local_engine_kv_blocks_used",
    "KV cache blocks held by sequences",
    ["deployment"],
    multiprocess_mode="livesum",
)
KV_TOTAL = Gauge(
    "gateway_local_engine_kv_blocks_total",
    "KV cache blocks in the pool",
    ["deployment"],
    multiprocess_mode="livesum",
)
TOKENS_PER_S = Gauge(
    "gateway_local_engine_tokens_per_second",
    "Output tokens per second over the last 10 s",
    ["deployment"],
    multiprocess_mode="livesum",
)
PREFIX_HIT_RATE = Gauge(
    "gateway_local_engine_prefix_cache_hit_rate",
    "Prompt tokens served from the prefix cache / prompt tokens looked up, since start",
    ["deployment"],
    multiprocess_mode="max",
)
PREFIX_QUERIED = Counter(
    "gateway_local_engine_prefix_cache_queried_tokens_total",
    "Prompt tokens looked up in the prefix cache",
    ["deployment"],
)
PREFIX_HITS = Counter(
    "gateway_local_engine_prefix_cache_hit_tokens_total",
    "Prompt tokens served from the prefix cache",
    ["deployment"],
)
PROMPT_TOKENS = Counter("gateway_local_engine_prompt_tokens_total", "Prompt tokens admitted", ["deployment"])
GENERATION_TOKENS = Counter(
    "gateway_local_engine_generation_tokens_total", "Tokens generated", ["deployment"]
)
FINISHED = Counter(
    "gateway_local_engine_requests_finished_total", "Requests that finished or were aborted", ["deployment"]
)
PREEMPTIONS = Counter(
    "gateway_local_engine_preemptions_total", "Sequences preempted for lack of KV blocks", ["deployment"]
)
SPEC_DRAFT = Counter(
    "gateway_local_engine_spec_draft_tokens_total",
    "Draft tokens proposed by speculative decoding and checked by the model",
    ["deployment"],
)
SPEC_ACCEPTED = Counter(
    "gateway_local_engine_spec_accepted_tokens_total", "Draft tokens the model accepted", ["deployment"]
)
SPEC_ACCEPTANCE = Gauge(
    "gateway_local_engine_spec_acceptance_rate",
    "Accepted / proposed draft tokens since start",
    ["deployment"],
    multiprocess_mode="max",
)
SPEC_TOKENS_PER_STEP = Gauge(
    "gateway_local_engine_spec_tokens_per_step",
    "Tokens a sequence gains per step that checks a draft, since start",
    ["deployment"],
    multiprocess_mode="max",
)
TTFT = Histogram(
    "gateway_local_engine_time_to_first_token_seconds",
    "From a request's arrival in the engine to its first token",
    ["deployment"],
    buckets=_TTFT_BUCKETS,
)
ITL = Histogram(
    "gateway_local_engine_inter_token_latency_seconds",
    "Between two tokens of one sequence",
    ["deployment"],
    buckets=_ITL_BUCKETS,
)

# engine.metrics key -> counter fed with its increments
COUNTERS = {
    "prompt_tokens_total": PROMPT_TOKENS,
    "generation_tokens_total": GENERATION_TOKENS,
    "requests_finished_total": FINISHED,
    "num_preemptions": PREEMPTIONS,
    "spec_draft_tokens_total": SPEC_DRAFT,
    "spec_accepted_tokens_total": SPEC_ACCEPTED,
}
# engine.metrics key -> gauge set to its value
GAUGES = {
    "running_seqs": RUNNING,
    "waiting_seqs": WAITING,
    "kv_blocks_used": KV_USED,
    "kv_blocks_total": KV_TOTAL,
    "tokens_per_s": TOKENS_PER_S,
    "prefix_cache_hit_rate": PREFIX_HIT_RATE,
    "spec_acceptance_rate": SPEC_ACCEPTANCE,
    "spec_tokens_per_step": SPEC_TOKENS_PER_STEP,
}
