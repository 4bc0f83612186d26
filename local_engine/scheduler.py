"""Continuous batching: which sequences run this step, and how many of their tokens.

Each step has a token budget. Running sequences go first in priority order (a decode
costs one token, an unfinished prefill a chunk of what is left); waiting sequences fill
the rest of the budget, so long prompts are prefilled in chunks between decodes. When
the KV cache is full the lowest-priority running sequence is preempted: its blocks are
freed and it is recomputed later from its tokens (the prefix cache often makes that cheap).
When every place (``max_num_seqs``) is taken and a sequence of a better priority waits (a
live request behind a gateway's batch lines), the worst running one is preempted the same
way, so that the better one is not kept waiting until another finishes. While a better
priority is present (running, or waiting and ready), the worse ones step back: at most
``max_background_seqs`` of them decode in a step, none prefills and none is admitted, so a
live request beside a batch runs nearly as fast as alone; they keep their cache blocks and
go on at full speed once it is done.
A decoding sequence with a speculative draft computes it in the same step when the budget
and the cache allow; otherwise the draft is dropped, never another sequence preempted for it.
"""

from __future__ import annotations

import bisect
import sys
from dataclasses import dataclass

from local_engine.block_manager import BlockManager
from local_engine.config import EngineConfig
from local_engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed for it this step, the draft included
    draft: tuple[int, ...] = ()  # speculated tokens computed after its last token

    @property
    def samples(self) -> bool:
        """Whether this step reaches the sequence's last token, so it yields a new one."""
        return self.seq.num_computed_tokens + self.num_tokens - len(self.draft) == self.seq.num_tokens


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_background_seqs = config.max_background_seqs
        self.block_manager = block_manager
        self.waiting: list[Sequence] = []  # sorted by (priority, arrival)
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.sort_key)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.add(seq)

    def _make_room(self) -> None:
        if len(self.running) < self.max_num_seqs:
            return
        first = next((seq for seq in self.waiting if seq.ready), None)
        if first is None:
            return
        worst = max(self.running, key=lambda seq: seq.sort_key)
        if worst.params.priority > first.params.priority:
            self._preempt(worst)

    def _idle_background(self, top: int, scheduled: list[ScheduledSeq]) -> Sequence | None:
        """The worst running sequence of a priority worse than ``top`` that is not in this step."""
        busy = {id(s.seq) for s in scheduled}
        idle = [seq for seq in self.running if seq.params.priority > top and id(seq) not in busy]
        return max(idle, key=lambda seq: seq.sort_key, default=None)

    def schedule(self) -> list[ScheduledSeq]:
        self._make_room()
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        self.running.sort(key=lambda s: s.sort_key)
        queue = list(self.running)  # the tail holds the first victims
        # The best priority present: worse ones step back (``top`` beyond every priority: none does).
        top = sys.maxsize
        if self.max_background_seqs is not None:
            ready = (seq.params.priority for seq in self.waiting if seq.ready)
            top = min((*(seq.params.priority for seq in self.running), *ready), default=top)
        background = 0  # sequences of a worse priority than ``top`` scheduled this step
        preempted = False
        while queue and budget > 0:
            seq = queue.pop(0)
            if not seq.ready:
                continue  # a KV handoff runs from its arrival, but its adapter may still be loading
            remaining = seq.num_tokens - seq.num_computed_tokens
            if seq.params.priority > top:
                if background >= (self.max_background_seqs or 0) or remaining > 1:
                    continue  # steps back for the better priority (a prefill chunk never runs beside it)
                background += 1
            n = min(remaining, budget)
            draft = tuple(seq.draft[: budget - n]) if n == remaining else ()
            if draft and not self.block_manager.append_slots(seq, n + len(draft)):
                draft = ()
            while not self.block_manager.append_slots(seq, n):
                preempted = True
                if queue:
                    self._preempt(queue.pop())
                else:
                    self._preempt(seq)
                    break
            else:
                scheduled.append(ScheduledSeq(seq, n + len(draft), draft))
                budget -= n + len(draft)
        # Admitting new work right after a preemption would only thrash the cache.
        for seq in list(self.waiting):
            if (
                budget <= 0
                or preempted
                or len(self.running) >= self.max_num_seqs
                or seq.params.priority > top
            ):
                break
            if not seq.ready:
                continue
            n = self.block_manager.allocate(seq, budget)
            while n == 0 and (idle := self._idle_background(top, scheduled)) is not None:
                self._preempt(idle)  # blocks held by a sequence that stepped back, for a better one
                n = self.block_manager.allocate(seq, budget)
            if n == 0:
                break
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        return scheduled
