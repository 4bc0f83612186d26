"""Cost of grammar-constrained decoding on SmolLM2 (49,152 tokens): mask time per token next to a decode step.

    nice -n 10 python bench/grammar_bench.py [--tokens 300]

For each library found (llguidance, the engine's choice; xgrammar if installed), a matcher
walks a JSON schema's grammar choosing random allowed tokens; the table shows the
per-token mask time and its share of one SmolLM2 decode step measured on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
        },
    },
    "required": ["name", "age", "tags", "address"],
    "additionalProperties": False,
}


def _walk(
    new: Callable[[], Any],
    fill: Callable[[Any, torch.Tensor], None],
    accept: Callable[[Any, int], bool],
    done: Callable[[Any], bool],
    vocab: int,
    tokens: int,
) -> list[float]:
    rng = random.Random(0)
    bits = torch.arange(32, dtype=torch.int32)
    mask = torch.zeros((1, (vocab + 31) // 32), dtype=torch.int32)
    m, times = new(), []
    for _ in range(tokens):
        t = time.perf_counter()
        fill(m, mask)
        times.append(time.perf_counter() - t)
        allowed = ((mask[0].unsqueeze(1) >> bits) & 1).flatten()[:vocab].nonzero().flatten().tolist()
        if not allowed or not accept(m, rng.choice(allowed)) or done(m):
            m = new()
    return times


def _decode_step_s(path: Any) -> float:
    from local_engine import LLMEngine, SamplingParams
    from local_engine.config import EngineConfig

    engine = LLMEngine(path, EngineConfig(kv_cache_bytes=64 << 20))
    engine.add_request(
        "r",
        "Write a long story about a robot.",
        SamplingParams(max_tokens=40, temperature=0, ignore_eos=True),
    )
    times = []
    while engine.has_unfinished():
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=300)
    args = ap.parse_args()
    from local_engine import resolve_model

    path = resolve_model("smollm2")
    vocab = 49152
    step = _decode_step_s(path)
    rows = []
    import llguidance

    t = time.perf_counter()
    tok = llguidance.LLTokenizer((path / "tokenizer.json").read_text(), n_vocab=vocab, eos_token=2)
    setup = time.perf_counter() - t
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))

    def ll_fill(m: Any, mask: torch.Tensor) -> None:
        m.unsafe_compute_mask_ptr(mask.data_ptr(), mask.numel() * 4)

    times = _walk(
        lambda: llguidance.LLMatcher(tok, grammar),
        ll_fill,
        lambda m, x: m.consume_token(x),
        lambda m: m.is_stopped(),
        vocab,
        args.tokens,
    )
    rows.append(("llguidance " + llguidance.__version__, setup, times))
    try:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        pass
    else:
        hf = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
        t = time.perf_counter()
        compiled = xgr.GrammarCompiler(
            xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab)
        ).compile_json_schema(json.dumps(SCHEMA))
        setup = time.perf_counter() - t
        times = _walk(
            lambda: xgr.GrammarMatcher(compiled),
            lambda m, mask: m.fill_next_token_bitmask(mask),
            lambda m, x: m.accept_token(x),
            lambda m: m.is_terminated(),
            vocab,
            args.tokens,
        )
        rows.append(("xgrammar", setup, times))
    print(f"SmolLM2 decode step (batch 1, median): {step * 1000:.1f} ms")
    print(
        f"{'library':<20} {'setup s':>8} {'mask p50 us':>12} {'mean us':>8} {'p99 us':>8} {'% of step':>10}"
    )
    for name, setup, times in rows:
        times.sort()
        mean = statistics.fmean(times)
        print(
            f"{name:<20} {setup:>8.2f} {times[len(times) // 2] * 1e6:>12.0f} {mean * 1e6:>8.0f} "
            f"{times[int(len(times) * 0.99)] * 1e6:>8.0f} {100 * mean / step:>9.2f}%"
        )


if __name__ == "__main__":
    main()
