"""Offline batch API: ``LLM(model).generate(prompts, params)``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

from local_engine.config import EngineConfig
from local_engine.engine import LLMEngine, Prompt
from local_engine.outputs import Completion
from local_engine.sampling_params import SamplingParams
from local_engine.tokenizer import Tokenizer


class LLM:
    """Synchronous wrapper that runs every prompt to completion with continuous batching."""

    def __init__(self, model: str | Path = "smollm2", **engine_options: Any) -> None:
        self.engine = LLMEngine(model, EngineConfig(**engine_options))
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        params: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Complete each prompt (text, token ids or chat messages); outputs come back in input order
        (with ``n > 1``, a prompt's n completions in a row)."""
        prompt_list = [prompts] if _is_single(prompts) else list(prompts)
        if params is None:
            params = SamplingParams()
        param_list = [params] * len(prompt_list) if isinstance(params, SamplingParams) else list(params)
        if len(param_list) != len(prompt_list):
            raise ValueError("one SamplingParams per prompt, or one for all")
        order = []
        for prompt, p in zip(prompt_list, param_list, strict=True):
            rid = f"llm-{next(self._ids)}"
            self.engine.add_request(rid, prompt, p)  # type: ignore[arg-type]
            order.append(rid)
        return self._drain(order)

    def chat(
        self, conversations: Seq[list[dict[str, Any]]], params: SamplingParams | None = None
    ) -> list[Completion]:
        """Complete each conversation (OpenAI-style messages) rendered with the chat template."""
        return self.generate(list(conversations), params)

    def _drain(self, order: list[str]) -> list[Completion]:
        seqs = [(rid, self.engine._requests[rid]) for rid in order]
        while self.engine.has_unfinished():
            self.engine.step()
        return [
            Completion(
                request_id=rid,
                index=s.index,
                prompt_token_ids=s.prompt_token_ids,
                token_ids=s.output_token_ids,
                text=s.output_text,
                finish_reason=s.finish_reason or "abort",
                logprobs=s.logprobs if s.params.logprobs is not None else None,
                cached_tokens=s.num_cached_tokens,
            )
            for rid, group in seqs
            for s in group
        ]


def _is_single(prompts: object) -> bool:
    """One prompt (text, token ids, or one conversation) rather than a list of them."""
    if isinstance(prompts, str):
        return True
    return isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], (int, dict))
