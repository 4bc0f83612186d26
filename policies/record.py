"""What one request did, filled in along its path and written once as the log line, metrics and ledger."""

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
    cached_tokens: int | None = None
    error: str | None = None
    log_level: LogLevel = "info"        # the log line's: a failure's own (errors.MAPPING)
    prompt: Any = None
    # what the policies decided; each sets its own and the middleware writes them out
    cache: str | None = None            # hit-exact | hit-semantic | miss (None: not eligible)
    cost_usd: float | None = None
    saved_usd: float | None = None
    attempts: list[str] = field(default_factory=list)   # "deployment:status" per upstream attempt
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the answer (rate limits, x-cache)

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
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                self.cached_tokens = details["cached_tokens"]
