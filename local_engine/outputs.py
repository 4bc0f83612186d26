"""What the engine hands back: a delta per step while running, a whole completion at the end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from local_engine.sequence import TokenLogprob


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """New tokens and text of one request since its previous output.

    ``index`` is the completion (0..n-1) it belongs to. ``finish_reason`` is that
    completion's: ``"stop"`` (EOS, stop token or stop string), ``"length"`` (max_tokens or
    context full) or ``"abort"``; None while running. ``done`` is True on the request's
    very last output, once all n completions have finished.
    """

    request_id: str
    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    done: bool
    kv_transfer_params: dict[str, Any] | None = None  # a prefill worker's handoff: where its KV waits

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished request, as ``LLM.generate`` returns it."""

    request_id: str
    index: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[TokenLogprob] | None
    cached_tokens: int
