"""What one request did, filled in along its path and written once as the log line and metrics."""

from __future__ import annotations

from dataclasses import dataclass
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
    error: str | None = None
    prompt: Any = None

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int):
                self.prompt_tokens = prompt
            if isinstance(completion, int):
                self.completion_tokens = completion
