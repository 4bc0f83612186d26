"""Speculative decoding keeps the target's output distribution, and pays for itself or stops."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from local_engine import LLM, EngineConfig, SamplingParams
from local_engine.sampler import filter_logits
from local_engine.sequence import Sequence
from local_engine.speculative import NgramIndex, verify
from tests.harness import reference_model

TOP_K = 8  # keeps the support small, so a few thousand samples fill every bin


def _target_logits(path: Path, draft: list[int]) -> tuple[list[int], torch.Tensor]:
    """The tiny model's logits after a prompt and after each draft token (what one target step sees)."""
    hf = reference_model(path)
    prompt = [random.Random(11).randrange(5, 500) for _ in range(12)]
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + draft])).logits[0, len(prompt) - 1 :]
    return prompt, logits


def _chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of observed ``counts`` under ``probs`` (Pearson's test, bins with mass only)."""
    support = probs > 0
    assert counts[~support].sum() == 0, "sampled a token the target gives probability 0"
    expected = probs[support] * counts.sum()
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    df = int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat.double() / 2))


def _two_step_target(path: Path, seq_params: SamplingParams) -> tuple[Sequence, torch.Tensor, list[int]]:
    probe_prompt, probe = _target_logits(path, [])
    d0 = probe[0].argsort(descending=True).tolist()[1]  # likely, not the likeliest: accepted and rejected
    _, after = _target_logits(path, [d0])
    d1 = int(after[1].argmax())
    prompt, logits = _target_logits(path, [d0, d1])
    assert prompt == probe_prompt
    seq = Sequence("r", prompt, seq_params)
    seq.generator = torch.Generator().manual_seed(1234)
    return seq, logits, [d0, d1]


def test_ngram_drafts_sample_the_targets_distribution(tiny_llama: Path) -> None:
    seq, logits, draft = _two_step_target(tiny_llama, SamplingParams(temperature=0.9, top_k=TOP_K))
    target = filter_logits(logits, [seq] * 3).softmax(-1)
    first = torch.zeros(logits.shape[1])
    second = torch.zeros(logits.shape[1])  # given the first token was the draft's
    for _ in range(4000):
        tokens = [t for t, _ in verify(logits, seq, draft)]
        first[tokens[0]] += 1
        if tokens[0] == draft[0]:
            second[tokens[1]] += 1
    assert 200 < first[draft[0]] < 3800  # both paths of the rejection sampler ran
    assert _chi_square_p(first, target[0]) > 1e-3
    assert _chi_square_p(second, target[1]) > 1e-3


def test_draft_model_drafts_sample_the_targets_distribution(tiny_llama: Path) -> None:
    seq, logits, _ = _two_step_target(tiny_llama, SamplingParams(temperature=0.9, top_k=TOP_K))
    target = filter_logits(logits[:1], [seq]).softmax(-1)[0]
    # A draft model's distribution: overlapping the target's but different, sampled from as it would be.
    g = torch.Generator().manual_seed(5)
    noisy = logits[:1] + torch.randn(1, logits.shape[1], generator=g)
    q = filter_logits(noisy, [seq]).softmax(-1)
    first = torch.zeros(logits.shape[1])
    rejected = 0
    for _ in range(4000):
        d0 = int(torch.multinomial(q[0], 1, generator=g)[0])
        # Only the first token is checked, so row 1 (after the draft) may be any row.
        tokens = [t for t, _ in verify(logits[:2], seq, [d0], q)]
        first[tokens[0]] += 1
        rejected += tokens[0] != d0
    assert 200 < rejected < 3800
    assert _chi_square_p(first, target) > 1e-3


def test_greedy_verification_accepts_exactly_the_argmax_prefix(tiny_llama: Path) -> None:
    prompt, logits = _target_logits(tiny_llama, [7, 8, 9])
    best = logits.argmax(-1).tolist()
    seq = Sequence("r", prompt, SamplingParams(temperature=0, logprobs=2))
    out = verify(logits, seq, [best[0], 8, 9])
    assert [t for t, _ in out] == [best[0], int(logits[1].argmax())]
    lp = out[0][1]
    assert lp is not None and lp.logprob == pytest.approx(float(logits[0].log_softmax(-1)[best[0]]))


def test_ngram_proposes_what_followed_the_latest_match() -> None:
    index = NgramIndex(1, 3)
    assert index.propose([1, 2, 3, 4], 4) == []
    tokens = [1, 2, 3, 4, 9, 2, 3, 5, 6, 2, 3]
    assert index.propose(tokens, 2) == [5, 6]  # latest "2 3" was followed by 5 6
    tokens += [4]
    assert index.propose(tokens, 3) == [9, 2, 3]  # the longest match wins: "2 3 4" at the start


def _random_requests(n: int) -> list[list[int]]:
    rng = random.Random(3)
    return [[rng.randrange(5, 60) for _ in range(30)] for _ in range(n)]


def test_speculation_switches_itself_off_when_drafts_are_rejected(tiny_llama: Path) -> None:
    # Prompts over a 55-token alphabet: 1-gram matches everywhere, sampled continuations rarely agree.
    params = SamplingParams(max_tokens=40, temperature=1.0, seed=0, ignore_eos=True)
    prompts = _random_requests(4)

    def drafted(min_acceptance: float) -> int:
        spec = {"num_tokens": 4, "ngram_min": 1, "min_acceptance": min_acceptance, "min_proposed": 8}
        llm = LLM(tiny_llama, block_size=4, num_kv_blocks=256, speculative=spec)
        llm.generate(prompts, params)
        m = llm.engine.metrics
        assert m.spec_draft_tokens_total > 0
        return m.spec_draft_tokens_total

    always, adaptive = drafted(0.0), drafted(0.9)
    # Each sequence stops after its first 8 proposed tokens (plus one draft of at most 4).
    assert adaptive <= 4 * (8 + 4) < always


def test_speculation_is_per_request(tiny_llama: Path) -> None:
    prompt = [random.Random(2).randrange(5, 500) for _ in range(10)] * 3
    llm = LLM(tiny_llama, block_size=4, num_kv_blocks=256, speculative={"min_acceptance": 0.0})
    off = llm.generate(
        prompt, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, speculative=False)
    )
    assert llm.engine.metrics.spec_draft_tokens_total == 0
    on = llm.generate(prompt, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    assert llm.engine.metrics.spec_draft_tokens_total > 0
    assert on[0].token_ids == off[0].token_ids


def test_bad_speculative_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="speculative method"):
        EngineConfig(speculative={"method": "medusa"})  # type: ignore[arg-type]  # as a config file gives it
    with pytest.raises(ValueError, match="num_tokens"):
        EngineConfig(speculative={"num_tokens": 0})  # type: ignore[arg-type]
