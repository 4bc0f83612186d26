"""Engine counters, readable as plain attributes or as one dict."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

_WINDOW = 1024  # recent samples kept for latency averages


def _mean(xs: deque[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


@dataclass(slots=True)
class EngineMetrics:
    running_seqs: int = 0
    waiting_seqs: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    prefix_cache_hit_rate: float = 0.0
    num_preemptions: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_finished_total: int = 0
    steps_total: int = 0
    spec_draft_tokens_total: int = 0  # tokens proposed by speculative decoding and checked
    spec_accepted_tokens_total: int = 0
    spec_verifications_total: int = 0  # sequence-steps that checked a draft
    ttft_s: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    itl_s: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    _token_times: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    # Called from the step loop's thread with each sample (e.g. a Prometheus histogram's observe).
    on_ttft: Callable[[float], None] | None = None
    on_itl: Callable[[float], None] | None = None

    def record_ttft(self, seconds: float) -> None:
        self.ttft_s.append(seconds)
        if self.on_ttft is not None:
            self.on_ttft(seconds)

    def record_itl(self, seconds: float) -> None:
        self.itl_s.append(seconds)
        if self.on_itl is not None:
            self.on_itl(seconds)

    def record_step(self, now: float, new_tokens: int) -> None:
        self.steps_total += 1
        self.generation_tokens_total += new_tokens
        if new_tokens:
            self._token_times.append((now, new_tokens))

    def record_verification(self, proposed: int, accepted: int) -> None:
        self.spec_draft_tokens_total += proposed
        self.spec_accepted_tokens_total += accepted
        self.spec_verifications_total += 1

    @property
    def spec_acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens since start."""
        return (
            self.spec_accepted_tokens_total / self.spec_draft_tokens_total
            if self.spec_draft_tokens_total
            else 0.0
        )

    @property
    def spec_tokens_per_step(self) -> float:
        """Tokens a sequence gained per step that checked a draft (1 + accepted drafts), since start."""
        v = self.spec_verifications_total
        return (v + self.spec_accepted_tokens_total) / v if v else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second over the last 10 seconds of steps."""
        now = time.perf_counter()
        # The step thread appends while the server's loop reads: copied in one C call (atomic under the
        # GIL) before Python code walks it, else "deque mutated during iteration" fails the read.
        recent = [(t, n) for t, n in tuple(self._token_times) if now - t <= 10.0]
        if len(recent) < 2:
            return 0.0
        span = recent[-1][0] - recent[0][0]
        return sum(n for _, n in recent[1:]) / span if span > 0 else 0.0

    def snapshot(self) -> dict[str, float | int | None]:
        return {
            "running_seqs": self.running_seqs,
            "waiting_seqs": self.waiting_seqs,
            "kv_blocks_used": self.kv_blocks_used,
            "kv_blocks_total": self.kv_blocks_total,
            "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
            "num_preemptions": self.num_preemptions,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "requests_finished_total": self.requests_finished_total,
            "steps_total": self.steps_total,
            "spec_draft_tokens_total": self.spec_draft_tokens_total,
            "spec_accepted_tokens_total": self.spec_accepted_tokens_total,
            "spec_verifications_total": self.spec_verifications_total,
            "spec_acceptance_rate": self.spec_acceptance_rate,
            "spec_tokens_per_step": self.spec_tokens_per_step,
            "tokens_per_s": self.tokens_per_s,
            "ttft_s_mean": _mean(self.ttft_s),
            "itl_s_mean": _mean(self.itl_s),
        }
