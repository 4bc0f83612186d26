"""Draft-model proposer (``engine.speculative: {method: draft, draft_model: PATH}``).

A second, smaller model that shares the target's tokenizer guesses the next K tokens; the
target checks them in one step (``speculative.verify``). The draft keeps its own paged KV
cache: each sequence has its own block table in a pool of the draft's, and the tokens whose
draft KV is valid. A step first feeds the draft what it has not seen (the prompt on a
sequence's first draft, afterwards the tokens the target accepted or chose), then one token
per further guess, all sequences batched in one draft forward per guess. Guesses the target
rejected are rolled back by counting only the guesses that match the sequence's tokens.

Greedy requests get the draft's argmax; sampled requests sample the draft's own distribution
``q`` (the request's temperature, top-k, top-p and min-p applied to the draft's logits) and hand
``q`` to the verifier, so rejection sampling keeps the output distribution exactly the target's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from local_engine.attention import build_metadata
from local_engine.loader import load_model
from local_engine.sampler import filter_logits
from local_engine.sequence import Sequence


@dataclass(slots=True)
class DraftState:
    """One sequence's place in the draft's cache."""

    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # leading tokens of the sequence whose draft KV is valid
    guessed_from: int = 0  # the sequence's length when the last guesses were made
    guesses: list[int] = field(default_factory=list)  # guesses whose KV the draft wrote


class DraftProposer:
    """Loads the draft model and proposes drafts for a batch of decoding sequences."""

    def __init__(
        self,
        path: str | Path,
        target_vocab: int,
        max_len: int,
        num_tokens: int,
        block_size: int,
        num_blocks: int,
        device: str,
        dtype: torch.dtype,
        quantization: str | None = None,
    ) -> None:
        self.model = load_model(path, max_len + num_tokens, device, dtype, quantization)
        cfg = self.model.config
        if cfg.vocab_size > target_vocab:
            raise ValueError(
                f"draft model {path} has a vocabulary of {cfg.vocab_size}, larger than the target's "
                f"{target_vocab}: a draft must share the target's tokenizer"
            )
        self.target_vocab = target_vocab
        self.block_size = block_size
        self.device = torch.device(device)
        shape = (num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.kv_caches = [
            (
                torch.zeros(shape, dtype=dtype, device=self.device),
                torch.zeros(shape, dtype=dtype, device=self.device),
            )
            for _ in range(cfg.num_hidden_layers)
        ]
        self.free_blocks = list(range(num_blocks - 1, -1, -1))
        self.states: dict[int, tuple[Sequence, DraftState]] = {}  # id(seq) → its state

    def propose(self, wanted: list[tuple[Sequence, int]]) -> None:
        """Set ``seq.draft`` (and ``seq.draft_probs`` for sampled requests) for each ``(seq, k)``, at
        most ``k`` tokens; a sequence the draft's cache has no room for gets no draft."""
        self._release_finished()
        rows: list[tuple[Sequence, DraftState, int]] = []
        for seq, k in wanted:
            st = self._state(seq)
            if self._reserve(st, seq.num_tokens + k - 1):
                rows.append((seq, st, k))
        if not rows:
            return
        feed = [seq.token_ids[st.num_computed :] for seq, st, _ in rows]
        probs: list[list[torch.Tensor]] = [[] for _ in rows]
        for step in range(max(k for _, _, k in rows)):
            active = [i for i, (_, _, k) in enumerate(rows) if k > step]
            logits = self._forward([rows[i][1] for i in active], [feed[i] for i in active])
            seqs = [rows[i][0] for i in active]
            sampled = [not s.params.greedy for s in seqs]
            q = filter_logits(logits, seqs).softmax(-1) if any(sampled) else None
            best = logits.argmax(-1).tolist()
            for j, i in enumerate(active):
                seq, st, _ = rows[i]
                st.num_computed += len(feed[i])
                if sampled[j]:
                    assert q is not None
                    token = int(torch.multinomial(q[j], 1, generator=seq.generator)[0])
                    probs[i].append(q[j])
                else:
                    token = best[j]
                seq.draft.append(token)
                feed[i] = [token]
        for i, (seq, st, _) in enumerate(rows):
            # The KV of every guess but the last was written; which of them stay valid is known
            # once the target has checked them (rolled back in _state).
            st.guessed_from, st.guesses = seq.num_tokens, seq.draft[:-1]
            st.num_computed = seq.num_tokens
            if probs[i]:
                q = torch.stack(probs[i])
                seq.draft_probs = F.pad(q, (0, self.target_vocab - q.shape[1]))

    def _state(self, seq: Sequence) -> DraftState:
        entry = self.states.get(id(seq))
        if entry is None:
            st = DraftState()
            self.states[id(seq)] = (seq, st)
            return st
        st = entry[1]
        # Guesses the target accepted keep their KV; the first mismatch and all after it are redone.
        kept = 0
        tokens = seq.token_ids
        for i, g in enumerate(st.guesses):
            if st.guessed_from + i >= len(tokens) - 1 or tokens[st.guessed_from + i] != g:
                break
            kept += 1
        st.num_computed = min(st.num_computed + kept, len(tokens) - 1)
        st.guesses = []
        return st

    def _reserve(self, st: DraftState, slots: int) -> bool:
        need = -(-slots // self.block_size) - len(st.block_table)
        if need > len(self.free_blocks):
            return False
        for _ in range(need):
            st.block_table.append(self.free_blocks.pop())
        return True

    def _release_finished(self) -> None:
        for key, (seq, st) in list(self.states.items()):
            if seq.finished:
                self.free_blocks.extend(st.block_table)
                del self.states[key]

    @torch.inference_mode()
    def _forward(self, states: list[DraftState], feeds: list[list[int]]) -> torch.Tensor:
        """The draft's logits after each state's fed tokens: ``[len(states), vocab]``."""
        ids: list[int] = []
        positions: list[int] = []
        last: list[int] = []
        for st, toks in zip(states, feeds, strict=True):
            ids.extend(toks)
            positions.extend(range(st.num_computed, st.num_computed + len(toks)))
            last.append(len(ids) - 1)
        meta = build_metadata(
            [len(f) for f in feeds],
            [st.num_computed + len(f) for st, f in zip(states, feeds, strict=True)],
            [st.block_table for st in states],
            self.block_size,
            self.device,
        )
        hidden = self.model(
            torch.tensor(ids, device=self.device),
            torch.tensor(positions, device=self.device),
            self.kv_caches,
            meta,
        )
        return self.model.logits(hidden[torch.tensor(last, device=self.device)]).cpu()
