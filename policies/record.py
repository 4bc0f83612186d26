"""What one request did, filled in along its path and written once as the log line, metrics and ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    cached_tokens: int | None = None        # prompt tokens read from the provider's cache
    cache_write_tokens: int | None = None   # prompt tokens written to it (Anthropic, Bedrock)
    reasoning_tokens: int | None = None     # completion tokens spent reasoning
    error: str | None = None
    prompt: Any = None
    # what the policies decided; each sets its own and the middleware writes them out
    cache: str | None = None            # hit-exact | hit-semantic | miss (None: not eligible)
    cost_usd: float | None = None
    saved_usd: float | None = None
    attempts: list[str] = field(default_factory=list)   # "deployment:status" per upstream attempt
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the answer (rate limits, x-cache)
    trace: Any = None                   # gateway/tracing.py's RequestSpans while tracing is on

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
