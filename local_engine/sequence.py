"""One request's state as it moves through the scheduler."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from local_engine.detokenizer import IncrementalDetokenizer
from local_engine.sampling_params import SamplingParams

_arrival = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A sampled token's log-probability and the top alternatives at that step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(eq=False, slots=True)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    detokenizer: IncrementalDetokenizer | None = None
    index: int = 0  # which of the request's n completions
    parent: Sequence | None = None  # the sibling whose prompt blocks this one waits to share
    token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    arrival: int = field(default_factory=lambda: next(_arrival))
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hashes of its full, cached blocks
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (first admission)
    generator: torch.Generator | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    output_text: str = ""
    num_emitted_chars: int = 0
    finish_reason: str | None = None
    num_preemptions: int = 0
    arrival_time: float = 0.0
    last_token_time: float | None = None
    matcher: Any = None  # llguidance.LLMatcher of a constrained request (llguidance imported lazily)
    draft: list[int] = field(default_factory=list)  # speculated tokens for the next step
    spec_index: Any = None  # the proposer's per-sequence state (speculative.NgramIndex)
    spec_proposed: int = 0
    spec_accepted: int = 0
    spec_off: bool = False  # acceptance was too low to be worth it
    lora: Any = None  # the lora.LoRAEntry of the adapter serving it; None: the base model
    cache_seed: int = 0  # first link of its prefix-cache keys: one chain per adapter

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.params.priority, self.arrival)

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def ready(self) -> bool:
        """False while its adapter loads, or while the parent still computes the prompt this sequence
        will take from the cache."""
        if self.lora is not None and self.lora.slot < 0:
            return False  # its adapter is still loading
        p = self.parent
        return p is None or p.finished or p.num_computed_tokens >= p.num_prompt_tokens
