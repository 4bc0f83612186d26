"""Quantized weights on the local engine: decode tokens/s at concurrency 1, weight bytes, quality.

    nice python bench/quant_bench.py              # SmolLM2-135M-Instruct, CPU: fp32, bf16, int8, int4 (with and without the 4-bit head scan)
    nice python bench/quant_bench.py --quick      # 24 tokens out, one repeat
    nice python bench/quant_bench.py --matmuls    # only the matmuls of a step: torch's kernels vs ours

Decode at concurrency 1 reads every weight once per token, so the bound printed next to each
row is ``memory bandwidth / weight bytes``; the bandwidth is measured here by timing reads of a
tensor much larger than the caches. Quality: perplexity on tests/local_engine/data/perplexity.txt
and greedy agreement with fp32 (the share of prompts whose continuation is identical). Each
configuration's tokens/s is the best of ``--repeat`` passes, the passes interleaved across the
configurations; on a shared machine compare the ratios within one run, not figures across runs.

After the table (or alone, ``--matmuls``): the matmuls of one decode step (1 row, every projection
and the LM head's full scan, in model order, weights out of cache) through torch's packed kernels
(``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``) and through ours
(:mod:`local_engine.kernels`), alternated, in thread CPU time (less noisy than wall time on a shared
machine; wall time with more than one thread): the best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from local_engine import LLM, SamplingParams, kernels
from local_engine.quant import (
    Int4Blocks,
    Int4Head,
    Int4Linear,
    Int8BlockLinear,
    Int8Linear,
    perplexity,
    quantize_int8,
    weight_bytes,
)

TEXT = Path(__file__).resolve().parent.parent / "tests" / "local_engine" / "data" / "perplexity.txt"
PROMPTS = [  # --quick takes the first 3
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in two sentences.",
    "Give three tips for learning to cook.",
    "Why is the sky blue?",
    "Name the planets of the solar system.",
]
CONFIGS = [
    ("fp32", "float32", None),
    ("bf16", "bfloat16", None),
    ("int8", "float32", "int8"),
    ("int4, int8 head", "float32", "int4"),  # the head without its 4-bit scan (local_engine.quant.Int4Head)
    ("int4", "float32", "int4"),  # the 4-bit head scan where the compiled kernels are not (else as above)
]


def bandwidth_gbs(mib: int = 1024, rounds: int = 5) -> float:
    """Best-of-``rounds`` read bandwidth: summing a tensor far larger than the caches."""
    t = torch.ones(mib * (1 << 20) // 4)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        t.sum()
        best = min(best, time.perf_counter() - start)
    return t.numel() * 4 / best / 1e9


def decode_pass(llm: LLM, max_tokens: int) -> tuple[float, list[list[int]]]:
    """Tokens/s of one pass over the prompts one at a time (concurrency 1), and the tokens."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    tokens, elapsed, outputs = 0, 0.0, []
    for prompt in PROMPTS:
        start = time.perf_counter()
        out = llm.chat([[{"role": "user", "content": prompt}]], params)[0]
        elapsed += time.perf_counter() - start
        tokens += len(out.token_ids)
        outputs.append(out.token_ids)
    return tokens / elapsed, outputs


def step_matmuls(model: torch.nn.Module) -> tuple[list[Callable[[], object]], list[Callable[[], object]]]:
    """One decode step's matmuls of a quantized model as calls to torch's kernels and to ours (the
    int4 head's 4-bit scan counts, its int8 refinement does not: that is not a full matmul)."""
    lib = kernels.library()
    assert lib is not None, "the compiled kernels are not available here"
    mods = [m for m in model.modules() if isinstance(m, (Int8Linear, Int8BlockLinear, Int4Linear))]
    if any(isinstance(m, Int4Head) for m in model.modules()):  # the head's scan, not its int8 rows
        mods = [m for m in mods if m is not model.lm_head.exact]  # type: ignore[union-attr]
    old: list[Callable[[], object]] = []
    new: list[Callable[[], object]] = []
    for m in mods:
        x = torch.randn(1, m.in_features)
        xb = x.bfloat16()
        if isinstance(m, Int8Linear):
            q, s = m.qweight, m.scale
            old.append(functools.partial(torch.ops.aten._weight_int8pack_mm, xb, q, s))
            new.append(functools.partial(kernels.int8_mm, lib, x, q, s))
        elif isinstance(m, Int8BlockLinear):  # a GGUF's Q8_0 blocks: torch's kernel takes them per row
            q, s = quantize_int8(m.dequantize())
            old.append(functools.partial(torch.ops.aten._weight_int8pack_mm, xb, q, s))
            new.append(functools.partial(kernels.int8b_mm, lib, x, m.q, m.d))
        else:
            sz = m.sz.float()
            blocks = Int4Blocks(kernels.unpack_int4(m.nib), sz[:, 0].contiguous(), sz[:, 1].contiguous())
            kernels.library.cache_clear()
            os.environ[kernels.DISABLE_ENV] = "1"  # torch's layout, for its kernel
            try:
                t = Int4Linear(blocks, None)
            finally:
                del os.environ[kernels.DISABLE_ENV]
                kernels.library.cache_clear()
            old.append(
                functools.partial(
                    torch.ops.aten._weight_int4pack_mm_for_cpu, xb, t.packed, t.group, t.scale_zero
                )
            )
            new.append(functools.partial(kernels.int4_mm, lib, x, m.nib, m.sz))
    return old, new


def time_matmuls(name: str, model: torch.nn.Module, rounds: int) -> None:
    old, new = step_matmuls(model)
    nbytes = sum(
        b.numel() * b.element_size()
        for m in model.modules()
        if isinstance(m, (Int8Linear, Int4Linear))
        for b in m.buffers(recurse=False)
    )
    # Thread CPU time on one thread; wall time on more (the calling thread's time would miss the others').
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    best = {"torch": float("inf"), "ours": float("inf")}
    for _ in range(rounds):  # alternated, so the machine's other work touches both alike
        for label, calls in (("torch", old), ("ours", new)):
            start = clock()
            for call in calls:
                call()
            best[label] = min(best[label], clock() - start)
    print(
        f"{name}: {len(new)} matmuls a step: torch's kernels {best['torch'] * 1e3:.2f} ms, "
        f"ours {best['ours'] * 1e3:.2f} ms ({best['torch'] / best['ours']:.2f}x; "
        f"{nbytes / 1e6:.0f} MB of quantized buffers in the model)",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--matmuls", action="store_true", help="only time a step's matmuls, old and new kernels")
    ap.add_argument("--rounds", type=int, default=10, help="alternated rounds of the matmul timing")
    args = ap.parse_args()
    if args.quick:
        args.max_tokens, args.repeat = 24, 1
        del PROMPTS[3:]
    torch.set_num_threads(args.threads)
    bw = bandwidth_gbs()
    print(f"memory read bandwidth: {bw:.1f} GB/s ({args.threads} threads)\n", flush=True)
    if args.matmuls:
        for method in ("int8", "int4"):
            llm = LLM(args.model, quantization=method, num_threads=args.threads, kv_cache_bytes=1 << 27)
            time_matmuls(method, llm.engine.model, args.rounds)
            del llm
        return
    llms, quality = [], []
    for name, dtype, quant in CONFIGS:
        llm = LLM(
            args.model, dtype=dtype, quantization=quant, num_threads=args.threads, kv_cache_bytes=1 << 27
        )
        model = llm.engine.model
        if name == "int4, int8 head" and isinstance(model.lm_head, Int4Head):  # (with our kernels it is)
            model.lm_head = model.lm_head.exact  # type: ignore[assignment]
        nbytes = weight_bytes(model)
        ppl = perplexity(model, llm.engine.tokenizer.encode(TEXT.read_text()))
        print(f"{name}: {nbytes / 1e6:.0f} MB, perplexity {ppl:.2f}", flush=True)
        llms.append(llm)
        quality.append((nbytes, ppl))
    # Passes interleaved across the configurations (all loaded at once), so a load that comes and goes
    # on a shared machine touches them alike; each one's best pass counts.
    best = [0.0] * len(CONFIGS)
    outputs: list[list[list[int]]] = [[] for _ in CONFIGS]
    for _ in range(args.repeat):
        for i, llm in enumerate(llms):
            tps, outputs[i] = decode_pass(llm, args.max_tokens)
            best[i] = max(best[i], tps)
    rows = []
    for i, (name, _, _) in enumerate(CONFIGS):
        nbytes, ppl = quality[i]
        agree = sum(a == b for a, b in zip(outputs[0], outputs[i], strict=True)) / len(PROMPTS)
        rows.append((name, nbytes, ppl, best[i], bw * 1e9 / nbytes, best[i] / best[0], agree))
    print("| weights | bytes (MB) | perplexity | tok/s (c=1) | bound tok/s | vs fp32 | greedy = fp32 |")
    print("|---|---|---|---|---|---|---|")
    ref_ppl = rows[0][2]
    for name, nbytes, ppl, tps, bound, speedup, agree in rows:
        print(
            f"| {name} | {nbytes / 1e6:.0f} | {ppl:.2f} ({(ppl / ref_ppl - 1) * 100:+.1f}%) | {tps:.1f} | "
            f"{bound:.1f} | {speedup:.2f}x | {agree:.0%} |"
        )
    print()
    for i, (name, _, quant) in enumerate(CONFIGS):
        if quant and name != "int4, int8 head" and kernels.library() is not None:
            time_matmuls(name, llms[i].engine.model, args.rounds)


if __name__ == "__main__":
    main()
