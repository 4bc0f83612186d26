"""Speculative decoding: propose a few next tokens cheaply, check them all in one target step.

The proposer here is n-gram prompt lookup: the sequence's last n tokens are looked up in its
own earlier tokens (prompt and output), and the tokens that followed the most recent earlier
occurrence are the guess. Editing code or quoting a document repeats long spans, which the
target then confirms several tokens per step.

Verification keeps the output distribution exactly the target's (Leviathan et al., 2023):
draft token ``d`` with draft probability ``q(d)`` is accepted with probability
``min(1, p(d) / q(d))``; the first rejected position samples from ``max(0, p - q)``
renormalised; when every draft is accepted the last row yields one more token. An n-gram
guess is a point mass (``q(d) = 1``), so acceptance is ``p(d)`` and the residual is ``p``
without ``d``. Greedy requests accept a draft exactly when it is the target's argmax.
"""

from __future__ import annotations

import torch

from local_engine.config import SpeculativeConfig
from local_engine.sampler import filter_logits, token_logprob
from local_engine.sequence import Sequence, TokenLogprob


class NgramIndex:
    """Where each n-gram of a sequence last occurred, extended as the sequence grows."""

    __slots__ = ("_maps", "_next_end")

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        # n → {n-gram: index of the token that followed its latest occurrence}, longest n first
        self._maps: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(ngram_max, ngram_min - 1, -1)
        }
        self._next_end = 0  # n-grams ending before this index are indexed

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest earlier match of ``tokens``' suffix."""
        length = len(tokens)
        # Index n-grams that now have a following token; the suffix itself is not one yet.
        for end in range(self._next_end, length - 1):
            for n, table in self._maps.items():
                if end + 1 >= n:
                    table[tuple(tokens[end + 1 - n : end + 1])] = end + 1
        self._next_end = max(self._next_end, length - 1)
        for n, table in self._maps.items():
            if length >= n and (follow := table.get(tuple(tokens[length - n :]))) is not None:
                return tokens[follow : follow + k]
        return []


def can_speculate(seq: Sequence) -> bool:
    """Whether ``seq`` may take drafts: asked for, not switched off, and sampled position-independently.

    Penalties depend on the tokens before each position and grammar masks on the matcher's
    state, so those requests decode one token at a time.
    """
    p = seq.params
    return p.speculative and not seq.spec_off and not p.has_penalties and seq.matcher is None


def propose(seq: Sequence, config: SpeculativeConfig, max_tokens: int) -> list[int]:
    """The draft for ``seq``'s next step, at most ``max_tokens`` long."""
    if max_tokens <= 0:
        return []
    if seq.spec_index is None:
        seq.spec_index = NgramIndex(config.ngram_min, config.ngram_max)
    return seq.spec_index.propose(seq.token_ids, min(max_tokens, config.num_tokens))


def verify(
    logits: torch.Tensor,  # [len(draft) + 1, vocab]: the target's logits at the last token and each draft
    seq: Sequence,
    draft: list[int] | tuple[int, ...],
    draft_probs: torch.Tensor | None = None,  # [len(draft), vocab]; None: point-mass guesses
) -> list[tuple[int, TokenLogprob | None]]:
    """The accepted drafts followed by one token from the target: 1 to ``len(draft) + 1`` tokens."""
    k = len(draft)
    tokens: list[int] = []
    if seq.params.greedy:
        best = logits.argmax(dim=-1).tolist()
        for i in range(k):
            if best[i] != draft[i]:
                break
            tokens.append(draft[i])
        tokens.append(best[len(tokens)])
    else:
        probs = filter_logits(logits, [seq] * (k + 1)).softmax(-1)
        gen = seq.generator
        for i in range(k):
            d = draft[i]
            q = 1.0 if draft_probs is None else float(draft_probs[i, d])
            u = float(torch.rand((), generator=gen))
            if u * q < float(probs[i, d]):
                tokens.append(d)
                continue
            residual = probs[i].clone()
            if draft_probs is None:
                residual[d] = 0
            else:
                residual = (residual - draft_probs[i]).clamp_(min=0)
            if float(residual.sum()) <= 0:  # p == q: any rejection leaves nothing; p itself is right
                residual = probs[i]
            tokens.append(int(torch.multinomial(residual, 1, generator=gen)[0]))
            break
        else:
            tokens.append(int(torch.multinomial(probs[k], 1, generator=gen)[0]))
    n = seq.params.logprobs
    if n is None:
        return [(t, None) for t in tokens]
    raw = logits.log_softmax(-1)
    return [(t, token_logprob(raw[i], t, n)) for i, t in enumerate(tokens)]
