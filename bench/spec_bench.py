"""Speculative decoding (n-gram prompt lookup) on the local engine: tokens/s with it on vs off.

    python bench/spec_bench.py              # SmolLM2-135M-Instruct, CPU, concurrency 1 and 8
    python bench/spec_bench.py --quick      # fewer prompts, 48 tokens out
    python bench/spec_bench.py --device cuda --dtype bfloat16
    python bench/spec_bench.py --draft-model PATH   # a draft model (same tokenizer) instead of n-gram

Two prompt sets: "repeating" prompts ask the model to reproduce a text that is in the prompt
(edit a code snippet, quote a paragraph), where drafts copied from the context get accepted;
"novel" prompts ask for new text, where speculation cannot help and must not cost much.
Greedy decoding, so both runs produce the same tokens and tokens/s compare like for like.
Each configuration runs off then on, ``--repeat`` times, keeping each one's best; on a shared
machine compare the ratio within one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_engine import LLM, SamplingParams

CODE = """def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    result = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            result.append(total / window)
    return result
"""
TEXT = (
    "The river rises in the northern hills and runs for two hundred miles through farmland "
    "before it reaches the sea. In spring the melting snow swells it, and the old stone bridge "
    "at the market town has been rebuilt three times since the first records were kept. "
    "Fishermen still work the lower reaches, where the water slows and widens into marshes."
)
REPEATING = [
    f"Rename the function moving_average to rolling_mean and return the whole code:\n\n{CODE}",
    f"Copy this paragraph exactly, word for word:\n\n{TEXT}",
    f"Add a docstring to this function and return the whole code:\n\n{CODE}",
    f"Repeat the following text, then say nothing else:\n\n{TEXT}",
]
NOVEL = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works to a ten year old.",
    "List ten ideas for a weekend trip in the mountains and say why each is good.",
    "Describe the history of the bicycle in a few paragraphs.",
]


def run(llm: LLM, prompts: list[str], concurrency: int, max_tokens: int, spec: bool) -> tuple[float, int]:
    """Output tokens/s serving ``prompts`` ``concurrency`` at a time."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, speculative=spec)
    tokens = 0
    start = time.perf_counter()
    for i in range(0, len(prompts), concurrency):
        convs: list[Any] = [[{"role": "user", "content": p}] for p in prompts[i : i + concurrency]]
        tokens += sum(len(c.token_ids) for c in llm.chat(convs, params))
    return tokens / (time.perf_counter() - start), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--num-tokens", type=int, default=5, help="draft length K")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--draft-model", default=None, help="propose with this model instead of n-gram lookup")
    args = ap.parse_args()
    max_tokens = 48 if args.quick else 128
    method = "draft" if args.draft_model else "ngram"
    spec: dict[str, Any] = {"method": method, "num_tokens": args.num_tokens}
    if args.draft_model:
        spec["draft_model"] = args.draft_model
    llm = LLM(args.model, device=args.device, dtype=args.dtype, speculative=spec)
    # Warm up (first-call allocations, thread pools) before timing anything.
    run(llm, REPEATING[:1], 1, 8, True)
    proposer = f"draft {args.draft_model}" if args.draft_model else "n-gram"
    print(
        f"model {args.model} on {args.device}, {proposer} K={args.num_tokens}, greedy, {max_tokens} tokens out\n"
    )
    print(
        f"{'prompts':<10} {'conc':>4} {'off tok/s':>10} {'on tok/s':>10} {'speedup':>8} {'accept':>7} {'tok/step':>8}"
    )
    for name, prompts in (("repeating", REPEATING), ("novel", NOVEL)):
        for concurrency in (1, 8):
            batch = prompts[:2] if concurrency == 1 and args.quick else prompts
            if concurrency == 8:
                batch = (prompts * 2)[:8]
            best = {False: 0.0, True: 0.0}
            counts: dict[bool, int] = {}
            m = llm.engine.metrics
            before = (m.spec_draft_tokens_total, m.spec_accepted_tokens_total, m.spec_verifications_total)
            for _ in range(args.repeat):
                for on in (False, True):
                    tps, n = run(llm, batch, concurrency, max_tokens, on)
                    best[on] = max(best[on], tps)
                    counts[on] = n
            drafted = m.spec_draft_tokens_total - before[0]
            accepted = m.spec_accepted_tokens_total - before[1]
            checks = m.spec_verifications_total - before[2]
            assert counts[False] == counts[True], "greedy output differs with speculation"
            print(
                f"{name:<10} {concurrency:>4} {best[False]:>10.1f} {best[True]:>10.1f} "
                f"{best[True] / best[False]:>7.2f}x {accepted / max(1, drafted):>7.2f} "
                f"{(checks + accepted) / max(1, checks):>8.2f}"
            )


if __name__ == "__main__":
    main()
