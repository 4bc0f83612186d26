"""Same weights, same numbers: our model against transformers' implementation."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import pytest
import torch

import local_engine.model_runner as model_runner
from local_engine import LLM, EngineConfig, LLMEngine, SamplingParams
from tests.harness import reference_model


def _hf_model(path: Path) -> torch.nn.Module:
    return cast("torch.nn.Module", reference_model(path))


def _hf_greedy(hf: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    # transformers' own forward and KV cache; not generate(), whose min_new_tokens would mask EOS.
    out_ids: list[int] = []
    with torch.no_grad():
        out = hf(torch.tensor([prompt]), use_cache=True)
        for _ in range(n):
            token = int(out.logits[0, -1].argmax())
            out_ids.append(token)
            out = hf(torch.tensor([[token]]), use_cache=True, **_cache_kwargs(out))
    return out_ids


def _cache_kwargs(out: Any) -> dict[str, Any]:
    # transformers 5.24 renamed past_key_values to cache (the old name warns, and warnings are errors).
    if "cache" in type(out).__dataclass_fields__:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


@pytest.mark.parametrize("chunk", [512, 7], ids=["whole-prefill", "chunked-prefill"])
def test_logits_match_transformers_at_prefill_and_every_decode(
    tiny_model: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured: list[torch.Tensor] = []
    real_sample = model_runner.sample

    def capture(logits: torch.Tensor, seqs: list[Any]) -> Any:
        captured.append(logits.clone())
        return real_sample(logits, seqs)

    monkeypatch.setattr(model_runner, "sample", capture)
    engine = LLMEngine(tiny_model, EngineConfig(block_size=4, num_kv_blocks=64, max_num_batched_tokens=chunk))
    prompt = [random.Random(1).randrange(5, 500) for _ in range(23)]
    engine.add_request("r", prompt, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))
    generated: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            generated.extend(out.token_ids)
    assert len(captured) == 10 and len(generated) == 10
    hf = _hf_model(tiny_model)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt + generated])).logits[0]
    for step, ours in enumerate(captured):
        torch.testing.assert_close(ours[0], ref[len(prompt) - 1 + step], atol=2e-4, rtol=1e-4)


def _mixed_requests(seed: int, n: int = 16, prefix: list[int] | None = None) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        prompt = (prefix or []) + [rng.randrange(5, 500) for _ in range(rng.randrange(3, 60))]
        reqs.append((prompt, rng.randrange(4, 24)))
    return reqs


def _check_greedy_identical(path: Path, reqs: list[tuple[list[int], int]], llm: LLM) -> None:
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for _, n in reqs]
    ours = llm.generate([p for p, _ in reqs], params)
    hf = _hf_model(path)
    for (prompt, n), out in zip(reqs, ours, strict=True):
        assert out.token_ids == _hf_greedy(hf, prompt, n)


def test_greedy_identical_for_16_concurrent_requests(tiny_model: Path) -> None:
    llm = LLM(tiny_model, block_size=4, num_kv_blocks=512, max_num_batched_tokens=64)
    _check_greedy_identical(tiny_model, _mixed_requests(2), llm)
    assert llm.engine.scheduler.num_preemptions == 0
    assert llm.engine.block_manager.num_used_blocks == 0


def test_greedy_identical_when_tiny_pool_forces_preemption(tiny_model: Path) -> None:
    llm = LLM(tiny_model, block_size=4, num_kv_blocks=24, max_num_batched_tokens=64)
    _check_greedy_identical(tiny_model, _mixed_requests(3), llm)
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.block_manager.num_used_blocks == 0


def test_greedy_identical_with_shared_prefixes(tiny_model: Path) -> None:
    prefix = [random.Random(4).randrange(5, 500) for _ in range(37)]
    reqs = _mixed_requests(5, prefix=prefix)
    llm = LLM(tiny_model, block_size=4, num_kv_blocks=512, max_num_batched_tokens=64)
    # A first wave warms the cache; the second wave's prompts then start with cached blocks.
    _check_greedy_identical(tiny_model, reqs[:4], llm)
    _check_greedy_identical(tiny_model, reqs[4:], llm)
    bm = llm.engine.block_manager
    assert bm.prefix_hits >= 12 * (37 // 4) * 4
    assert 0 < llm.engine.metrics.prefix_cache_hit_rate < 1


def _repeating_requests(
    seed: int, n: int = 16, prefix: list[int] | None = None
) -> list[tuple[list[int], int]]:
    """Prompts that quote themselves (a segment two or three times), so n-gram drafts get accepted."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        segment = [rng.randrange(5, 500) for _ in range(rng.randrange(4, 16))]
        reqs.append(((prefix or []) + segment * rng.randrange(2, 4), rng.randrange(4, 24)))
    return reqs


_SPEC = {"num_tokens": 4, "min_acceptance": 0.0}


@pytest.mark.parametrize(
    ("num_kv_blocks", "max_batched"),
    [(512, 64), (512, 7), (24, 64)],
    ids=["batched", "chunked-prefill", "preempted"],
)
def test_greedy_identical_with_ngram_speculation(
    tiny_model: Path, num_kv_blocks: int, max_batched: int
) -> None:
    llm = LLM(
        tiny_model,
        block_size=4,
        num_kv_blocks=num_kv_blocks,
        max_num_batched_tokens=max_batched,
        speculative=_SPEC,
    )
    _check_greedy_identical(tiny_model, _repeating_requests(6), llm)
    m = llm.engine.metrics
    assert m.spec_accepted_tokens_total > 0 and m.spec_tokens_per_step > 1
    assert (llm.engine.scheduler.num_preemptions > 0) == (num_kv_blocks == 24)
    assert llm.engine.block_manager.num_used_blocks == 0


def test_greedy_identical_with_speculation_on_cached_prefixes(tiny_model: Path) -> None:
    prefix = [random.Random(7).randrange(5, 500) for _ in range(37)]
    reqs = _repeating_requests(8, prefix=prefix)
    llm = LLM(tiny_model, block_size=4, num_kv_blocks=512, max_num_batched_tokens=64, speculative=_SPEC)
    _check_greedy_identical(tiny_model, reqs[:4], llm)
    _check_greedy_identical(tiny_model, reqs[4:], llm)
    assert llm.engine.block_manager.prefix_hits >= 12 * (37 // 4) * 4
    assert llm.engine.metrics.spec_accepted_tokens_total > 0
