"""Prometheus metrics. With several workers, each writes to PROMETHEUS_MULTIPROC_DIR and a scrape of
any worker sums them all (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1)

REQUESTS = Counter("gateway_requests_total", "Requests answered, by tenant, model alias and HTTP status",
                   ["tenant", "alias", "status"])
LATENCY = Histogram("gateway_request_duration_seconds", "Time from request to the last byte of the answer",
                    ["tenant", "alias"], buckets=_LATENCY_BUCKETS)
TTFT = Histogram("gateway_time_to_first_token_seconds", "Streams: time from request to the first chunk sent",
                 ["tenant", "alias"], buckets=_LATENCY_BUCKETS)
OVERHEAD = Histogram("gateway_overhead_seconds", "Time spent in the gateway itself, upstream excluded",
                     buckets=_OVERHEAD_BUCKETS)
TOKENS = Counter("gateway_tokens_total", "Tokens reported by upstreams, by kind (prompt or completion)",
                 ["tenant", "alias", "kind"])
UPSTREAM_ERRORS = Counter("gateway_upstream_errors_total", "Failed upstream attempts by deployment and status",
                          ["deployment", "status"])
IN_FLIGHT = Gauge("gateway_in_flight_requests", "Requests being handled now", multiprocess_mode="livesum")
DEPLOYMENT_ENABLED = Gauge("gateway_deployment_enabled", "1 if the deployment can take requests",
                           ["alias", "deployment"], multiprocess_mode="max")
CACHE_LOOKUPS = Counter("gateway_cache_lookups_total", "Cache lookups by result (hit-exact, hit-semantic, miss)",
                        ["tenant", "alias", "result"])
CACHE_SAVED = Counter("gateway_cache_saved_usd_total", "Dollars cache hits saved: what the answers cost upstream",
                      ["tenant"])


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
