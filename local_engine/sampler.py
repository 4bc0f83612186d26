"""Turns the logits of a step into tokens: penalties, temperature, top-k/p, min-p, seeds, logprobs."""

from __future__ import annotations

import torch

from local_engine.sequence import Sequence, TokenLogprob
from local_engine.structured import apply_masks


def _apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    logits = logits.clone()
    vocab = logits.shape[-1]
    for i, seq in enumerate(seqs):
        p = seq.params
        if not p.has_penalties:
            continue
        row = logits[i]
        if p.repetition_penalty != 1:
            # transformers' rule, over prompt and output: shrink positive logits, grow negative ones.
            seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long)
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        out = seq.output_token_ids
        if out and (p.presence_penalty or p.frequency_penalty):
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=vocab)[:vocab].to(
                row.dtype
            )
            row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
    return logits


def _filter(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    temps = torch.tensor([s.params.temperature for s in seqs], dtype=logits.dtype).unsqueeze(1)
    logits = logits / temps
    top_ks = [s.params.top_k for s in seqs]
    vocab = logits.shape[-1]
    if any(0 < k < vocab for k in top_ks):
        k = torch.tensor([k if 0 < k < vocab else vocab for k in top_ks]).unsqueeze(1)
        sorted_logits = logits.sort(dim=-1, descending=True).values
        kth = sorted_logits.gather(1, k - 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    top_ps = torch.tensor([s.params.top_p for s in seqs], dtype=logits.dtype).unsqueeze(1)
    if (top_ps < 1).any():
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token once the mass before it already reaches top_p; the first always stays.
        drop = (probs.cumsum(-1) - probs) >= top_ps
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    min_ps = torch.tensor([s.params.min_p for s in seqs], dtype=logits.dtype).unsqueeze(1)
    if (min_ps > 0).any():
        probs = logits.softmax(-1)
        threshold = probs.max(dim=-1, keepdim=True).values * min_ps
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[TokenLogprob | None]]:
    """Pick one token per row of ``logits`` (float32, ``[len(seqs), vocab]``)."""
    want_logprobs = [s.params.logprobs is not None for s in seqs]
    raw_logprobs = logits.log_softmax(-1) if any(want_logprobs) else None
    if any(s.params.has_penalties for s in seqs):
        logits = _apply_penalties(logits, seqs)
    if any(s.matcher is not None for s in seqs):
        logits = apply_masks(logits, [s.matcher for s in seqs])
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if random_rows:
        rows = torch.tensor(random_rows)
        probs = _filter(logits[rows], [seqs[i] for i in random_rows]).softmax(-1)
        unseeded = [j for j, i in enumerate(random_rows) if seqs[i].generator is None]
        if unseeded:
            picked = torch.multinomial(probs[unseeded], 1).squeeze(1)
            tokens[rows[unseeded]] = picked
        for j, i in enumerate(random_rows):
            gen = seqs[i].generator
            if gen is not None:
                tokens[i] = torch.multinomial(probs[j], 1, generator=gen)[0]
    token_list = tokens.tolist()
    out_logprobs: list[TokenLogprob | None] = [None] * len(seqs)
    if raw_logprobs is not None:
        for i, s in enumerate(seqs):
            n = s.params.logprobs
            if n is None:
                continue
            row = raw_logprobs[i]
            top: tuple[tuple[int, float], ...] = ()
            if n > 0:
                vals, ids = row.topk(n)
                top = tuple(zip(ids.tolist(), vals.tolist(), strict=True))
            out_logprobs[i] = TokenLogprob(token_list[i], float(row[token_list[i]]), top)
    return token_list, out_logprobs
