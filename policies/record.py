"""What one request did, filled in along its path and written once as the log line, metrics and ledger.

Each layer hands back what it found through one method here, so that a new layer (or a reader of the log
line) sees in one place what every layer reports:

    gateway (handlers)   who (tenant, key_id), alias, stream, prompt; status, overhead_s, ttft_s; ``fail``
    admission            ``limited``: rate-limit headers; cost_usd once settled (``priced``)
    cache                ``cached``: hit-exact | hit-semantic | miss, the cost saved, ``x-cache`` headers
    resilience           ``attempted`` per upstream attempt, ``answered`` by the deployment that answered
    pipeline             ``take_usage``: the upstream's token counts
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from errors import GatewayError, LogLevel


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    started: float
    endpoint: str
    tenant: str = "-"
    key_id: str = "-"
    alias: str = "-"
    deployment: str | None = None
    status: int = 0
    stream: bool = False
    upstream_s: float = 0.0
    overhead_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens read from the provider's cache
    cache_write_tokens: int | None = None  # prompt tokens written to it (Anthropic, Bedrock)
    reasoning_tokens: int | None = None  # completion tokens spent reasoning
    error: str | None = None
    log_level: LogLevel = "info"  # the log line's: a failure's own (errors.MAPPING)
    prompt: Any = None
    # what the policies decided; each sets its own and the middleware writes them out
    cache: str | None = None  # hit-exact | hit-semantic | miss (None: not eligible)
    cost_usd: float | None = None
    saved_usd: float | None = None
    attempts: list[str] = field(default_factory=list)  # "deployment:status" per upstream attempt
    response_headers: dict[str, str] = field(
        default_factory=dict
    )  # added to the answer (rate limits, x-cache)
    variant: str | None = None  # the alias's variant that served it (policies/variants.py)
    trace: Any = None  # gateway/tracing.py's RequestSpans while tracing is on

    def limited(self, headers: dict[str, str]) -> None:
        """Admission: the rate-limit headers the answer carries (``x-ratelimit-*``)."""
        self.response_headers.update(headers)

    def priced(self, cost_usd: float) -> None:
        """Admission's settlement: what the request cost."""
        self.cost_usd = cost_usd

    def cached(self, kind: str, saved_usd: float | None = None, similarity: float | None = None) -> None:
        """The cache: ``miss``, or a hit (``hit-exact``, ``hit-semantic``) that cost nothing and saved
        ``saved_usd``; also the ``x-cache`` headers."""
        self.cache = kind
        self.response_headers["x-cache"] = kind
        if kind != "miss":
            self.cost_usd, self.saved_usd = 0.0, saved_usd or 0.0
        if similarity is not None:
            self.response_headers["x-cache-similarity"] = f"{similarity:.4f}"

    def attempted(self, deployment: str, status: int) -> None:
        """Resilience: one upstream attempt and its status (``deployment:status`` in ``attempts``)."""
        self.attempts.append(f"{deployment}:{status}")
        self.deployment = deployment

    def answered(self, deployment: str, upstream_s: float) -> None:
        """Resilience: the deployment whose answer is relayed, and how long it took to answer."""
        self.deployment, self.upstream_s = deployment, upstream_s

    def fail(self, exc: GatewayError) -> None:
        """The request ended in ``exc``: its status, message and log level go to the log line."""
        self.status, self.error, self.log_level = exc.status, exc.message, exc.log_level

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int):
                self.prompt_tokens = prompt
            if isinstance(completion, int):
                self.completion_tokens = completion
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                if isinstance(details.get("cached_tokens"), int):
                    self.cached_tokens = details["cached_tokens"]
                if isinstance(details.get("cache_creation_tokens"), int):
                    self.cache_write_tokens = details["cache_creation_tokens"]
            details = usage.get("completion_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
                self.reasoning_tokens = details["reasoning_tokens"]
