"""Where a decode step's time goes at concurrency 1, per weight format (fp32, int8, int4).

    nice python bench/quant_step_bench.py                 # SmolLM2-135M-Instruct, 1 thread
    nice python bench/quant_step_bench.py --quick         # fewer steps, rounds and tokens

Three figures per format, all in thread CPU time (``time.thread_time``, 1 thread: on a shared machine it
moves far less than wall time):

* **step**: one decode step as the engine runs it, ``model(...)`` and ``model.logits`` over a private paged
  cache (no scheduler, no sampling), a context of ``--context`` tokens growing by one a step; the mean of
  ``--steps`` steps, best of ``--rounds``;
* **rest**: the same step with every matmul (the projections and the LM head) replaced by a copy of a
  cached output, so what is left is attention, norms, RoPE, the K/V writes, activations, casts and Python;
  ``step - rest`` is the matmuls' share;
* **token**: whole requests through ``LLM.generate`` (``--tokens`` tokens each, greedy, the bench's
  prompts one at a time): the CPU time of a request less that of a 1-token request (its prefill), per
  token after the first, best of ``--rounds``; then its ratio to fp32's.

Rounds alternate across the formats (all loaded at once), so the machine's other work touches them
alike. ``logits`` is a digest of the timed steps' logits: equal digests across two source trees (run this
file from each) mean the steps computed the same bits.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from local_engine import LLM, SamplingParams
from local_engine.attention import build_metadata
from local_engine.models.llama import LlamaForCausalLM
from local_engine.quant import Int4Linear, Int8Linear

FORMATS = {"fp32": None, "int8": "int8", "int4": "int4"}
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in two sentences.",
]
BLOCK = 16


class Stepper:
    """Decode steps of one model over its own paged cache, after a prefill of ``context`` tokens."""

    def __init__(self, model: LlamaForCausalLM, context: int, steps: int) -> None:
        self.model = model
        cfg = model.config
        self.context, self.steps = context, steps
        blocks = -(-(context + steps + 1) // BLOCK)
        shape = (blocks, BLOCK, cfg.num_key_value_heads, cfg.head_dim)
        self.kv = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_hidden_layers)]
        self.table = list(range(blocks))
        gen = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(5, cfg.vocab_size, (context + steps,), generator=gen).tolist()
        with torch.inference_mode():
            n = context
            meta = build_metadata([n], [n], [self.table], BLOCK, torch.device("cpu"))
            model(torch.tensor(self.tokens[:n]), torch.arange(n), self.kv, meta)
        # Each step's inputs built once, outside the timed loop.
        self.inputs = [
            (
                torch.tensor([self.tokens[p]]),
                torch.tensor([p]),
                build_metadata([1], [p + 1], [self.table], BLOCK, torch.device("cpu")),
            )
            for p in range(context, context + steps)
        ]

    @torch.inference_mode()
    def run(self) -> tuple[float, str]:
        """The mean thread CPU seconds of a step, and a digest of the steps' logits."""
        digest = hashlib.sha256()
        elapsed = 0.0
        for ids, pos, meta in self.inputs:
            start = time.thread_time()
            logits = self.model.logits(self.model(ids, pos, self.kv, meta))
            elapsed += time.thread_time() - start
            digest.update(logits.numpy().tobytes())
        return elapsed / self.steps, digest.hexdigest()[:12]


def matmuls(model: nn.Module) -> list[nn.Module]:
    """The modules whose forward is a matmul: the projections and the LM head (the embedding table's int8
    rows are a lookup, kept)."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear, Int4Linear))]


def stub_matmuls(model: nn.Module) -> Callable[[], None]:
    """Replace every matmul's forward by a copy of its output for a 1-row input (computed once here);
    returns the undo."""
    mods = matmuls(model)
    for m in mods:
        with torch.inference_mode():
            out = m(torch.randn(1, cast("int", m.in_features)))
        m.forward = lambda x, out=out: out.clone()

    def undo() -> None:
        for m in mods:
            del m.forward

    return undo


def token_cpu(llm: LLM, tokens: int) -> float:
    """Thread CPU seconds per decoded token of the prompts' requests (a 1-token request's time taken
    off each: its prefill)."""

    def cpu(n: int) -> float:
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        start = time.thread_time()
        for prompt in PROMPTS:
            llm.chat([[{"role": "user", "content": prompt}]], params)
        return time.thread_time() - start

    return (cpu(tokens) - cpu(1)) / (len(PROMPTS) * (tokens - 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--formats", default="fp32,int8,int4")
    ap.add_argument("--context", type=int, default=60)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.tokens = 8, 2, 16
    torch.set_num_threads(1)
    names = args.formats.split(",")
    llms = {
        name: LLM(args.model, quantization=FORMATS[name], num_threads=1, kv_cache_bytes=1 << 27)
        for name in names
    }
    steppers = {name: Stepper(llm.engine.model, args.context, args.steps) for name, llm in llms.items()}
    best: dict[str, dict[str, float]] = {n: {"step": 1e9, "rest": 1e9, "token": 1e9} for n in names}
    digests: dict[str, str] = {}
    for _ in range(args.rounds):
        for name in names:
            s = steppers[name]
            s.run()  # warm
            t, digests[name] = s.run()
            best[name]["step"] = min(best[name]["step"], t)
            undo = stub_matmuls(s.model)
            try:
                s.run()
                best[name]["rest"] = min(best[name]["rest"], s.run()[0])
            finally:
                undo()
            best[name]["token"] = min(best[name]["token"], token_cpu(llms[name], args.tokens))
    ref = best[names[0]]["token"]
    print(
        f"source: {Path(__file__).resolve().parent.parent}, context {args.context}, 1 thread, thread CPU time"
    )
    print("| weights | step | rest | matmuls | token | vs " + names[0] + " | logits |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        b = best[name]
        print(
            f"| {name} | {b['step'] * 1e3:.2f} ms | {b['rest'] * 1e3:.2f} ms | {(b['step'] - b['rest']) * 1e3:.2f} ms "
            f"| {b['token'] * 1e3:.2f} ms | {ref / b['token']:.2f}x | {digests[name]} |"
        )


if __name__ == "__main__":
    main()
