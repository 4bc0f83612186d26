"""LoRA serving throughput: 32 concurrent requests over 1, 4 and 16 distinct adapters against the base alone.

    python bench/lora_throughput.py                  # SmolLM2-135M, rank 8 on all seven projections
    python bench/lora_throughput.py --model tiny     # a tiny random Llama built in a temp dir (seconds)
    python bench/lora_throughput.py --rounds 3       # each row 3 times, interleaved; the median is kept

Each row runs the same 32 greedy requests (same prompts, ``--tokens`` out each) through one ``LLMEngine``
with ``max_loras`` 16, every adapter already resident, so the row measures the step with gathered adapter
matmuls and not the loading. Then adapter load time: ``add_lora`` (the check) and the loader thread's read
and stacking, per adapter. Adapters are random PEFT directories written in PEFT's format (the tests check
that format against peft itself). The target (docs/lora.md): 16 adapters at >= 70% of the base's tokens/s.
Figures on a shared machine drift run to run: compare rows of one run; tok/CPU-s moves least with other load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from safetensors.torch import save_file

from local_engine import EngineConfig, LLMEngine, ModelConfig, SamplingParams, resolve_model
from local_engine.lora import TARGETS, module_shapes

CONCURRENT = 32
ADAPTER_COUNTS = (0, 1, 4, 16)  # 0: the base model alone


def write_adapter(path: Path, cfg: ModelConfig, rank: int, seed: int) -> Path:
    """A random LoRA adapter in PEFT's layout (adapter_config.json + adapter_model.safetensors)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = module_shapes(cfg)
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for module in TARGETS:
            d_in, d_out = shapes[module]
            parent = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{parent}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, d_in, generator=gen) / d_in**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(d_out, rank, generator=gen) * 0.01
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(TARGETS),
        "bias": "none",
        "use_rslora": False,
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def tiny_model(root: Path) -> Path:
    from tests.local_engine.conftest import _build

    return _build(root / "tiny", "llama")


def run_row(
    engine: LLMEngine, prompts: list[list[int]], adapters: list[str], tokens: int
) -> tuple[float, float]:
    """(output tokens/s, output tokens per CPU-second) of the 32 requests, adapters round-robin."""
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params, lora=adapters[i % len(adapters)] if adapters else None)
    wall, cpu, produced = time.perf_counter(), time.process_time(), 0
    for _ in range(100_000):  # bounded: 32 x tokens steps at most, plus prefill chunks
        if not engine.has_unfinished():
            break
        produced += len(engine.step())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert produced == len(prompts) * tokens, produced
    return produced / wall, produced / cpu


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="'smollm2', 'tiny', or an HF directory")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per request")
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tiny_model(root) if args.model == "tiny" else resolve_model(args.model)
        cfg = ModelConfig.from_dir(model)
        engine = LLMEngine(
            model,
            EngineConfig(
                max_loras=16,
                max_lora_rank=args.rank,
                num_threads=args.threads,
                max_num_seqs=CONCURRENT,
                max_num_batched_tokens=512,
                enable_prefix_caching=False,
            ),
        )
        checks, names = [], []
        for i in range(max(ADAPTER_COUNTS)):
            path = write_adapter(root / f"adapter{i}", cfg, args.rank, seed=i)
            began = time.perf_counter()
            engine.add_lora(f"a{i}", path)
            checks.append(time.perf_counter() - began)
            names.append(f"a{i}")
        rng = random.Random(0)
        prompts = [
            [rng.randrange(10, cfg.vocab_size - 10) for _ in range(args.prompt_tokens)]
            for _ in range(CONCURRENT)
        ]
        run_row(engine, prompts[:2], names, 2)  # warm-up, and every adapter loaded and resident
        run_row(engine, prompts[2:18], names, 2)
        assert engine.loras is not None and all(i.resident for i in engine.list_loras())
        results: dict[int, list[tuple[float, float]]] = {n: [] for n in ADAPTER_COUNTS}
        for _ in range(args.rounds):
            for n in ADAPTER_COUNTS:
                results[n].append(run_row(engine, prompts, names[:n], args.tokens))
                print(
                    f"  {n or 'base'}: {results[n][-1][0]:.0f} tokens/s, {results[n][-1][1]:.0f} tok/CPU-s",
                    file=sys.stderr,
                    flush=True,
                )
        loads = engine.loras.load_seconds
    base_tps = statistics.median(r[0] for r in results[0])
    base_cps = statistics.median(r[1] for r in results[0])
    print(
        f"\nLoRA throughput: {args.model}, {CONCURRENT} concurrent, {args.prompt_tokens} tokens in, "
        f"{args.tokens} out, rank {args.rank} on {len(TARGETS)} projections, {torch.get_num_threads()} "
        f"threads, median of {args.rounds}\n"
    )
    print("| adapters | tokens/s | vs base | tok/CPU-s | vs base |")
    print("|---|---|---|---|---|")
    for n in ADAPTER_COUNTS:
        tps = statistics.median(r[0] for r in results[n])
        cps = statistics.median(r[1] for r in results[n])
        print(f"| {n or 'base'} | {tps:.0f} | {tps / base_tps:.0%} | {cps:.0f} | {cps / base_cps:.0%} |")
    print(
        f"\nadapter load: check (add_lora) {statistics.mean(checks) * 1e3:.1f} ms, read + stack in the loader "
        f"thread {statistics.mean(loads) * 1e3:.1f} ms (mean of {len(loads)})"
    )
    ratio = statistics.median(r[0] for r in results[16]) / base_tps
    cpu_ratio = statistics.median(r[1] for r in results[16]) / base_cps
    met = "met" if min(ratio, cpu_ratio) >= 0.7 else "NOT met"
    print(f"target 16 adapters >= 70% of base: {met} (tokens/s {ratio:.0%}, tok/CPU-s {cpu_ratio:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
