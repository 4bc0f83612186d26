"""Where the semantic cache loses paraphrases: each paraphrase pair of a split (default test) that a mode
does not serve, broken down by the stage that refuses it.

Stages, in the order a lookup meets them: the vector search's cosine threshold, each slot check of
``slots.conflicts`` (symbol, quoted, order, number, date, negation, quantity, qualifier, name, opposite,
swap), the faq mode's
``unmatched`` veto, then the classifier (pairs that ``slots.same_words`` serves skip it). Printed per class:
how many paraphrases each stage refuses ("any": whether or not another stage also refuses the pair) and how
many only it refuses ("only": what fixing that stage alone would win back); near-miss pairs the same way,
so that a stage's cost in false hits is on the same page. ``--examples N`` prints N refused pairs per stage.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/cache_misses.py [--mode general] [--examples 5]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train_verifier import embed_pairs, load_pairs  # noqa: E402
from policies.cache import slots, verifier  # noqa: E402

SLOTS = (
    "symbol",
    "quoted",
    "order",
    "number",
    "date",
    "negation",
    "quantity",
    "qualifier",
    "name",
    "opposite",
    "swap",
)


def refusals(a: str, u: np.ndarray, b: str, v: np.ndarray, mode: str) -> list[str]:
    """Every stage that refuses serving ``b``'s answer for ``a`` in ``mode``."""
    point = verifier.operating_point(mode)
    out = []
    if float(u @ v) < point.threshold:
        out.append("cosine")
    out.extend(slots.conflicts(a, b))
    if mode == "faq" and slots.unmatched(a, b):
        out.append("unmatched")
    if not slots.same_words(a, b) and verifier.probability(a, u, b, v) < point.min_probability:
        out.append("classifier")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", default="test", choices=("test", "train"))
    parser.add_argument("--mode", default="general", choices=("faq", "general"))
    parser.add_argument("--examples", type=int, default=0, help="refused paraphrase pairs to print per stage")
    parser.add_argument("--near", action="store_true", help="print examples of near misses served instead")
    args = parser.parse_args()

    rows = load_pairs(args.split)
    u, v = embed_pairs(rows)
    stages = ("cosine", *SLOTS, *(("unmatched",) if args.mode == "faq" else ()), "classifier")
    for label, title in ((1, "paraphrases refused"), (0, "near misses refused")):
        anyc: dict[str, Counter[str]] = defaultdict(Counter)
        only: dict[str, Counter[str]] = defaultdict(Counter)
        total: Counter[str] = Counter()
        served: Counter[str] = Counter()
        examples: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for i, r in enumerate(rows):
            if int(r["label"]) != label or r["class"] == "unrelated":  # type: ignore[call-overload]
                continue
            cls, a, b = str(r["class"]), str(r["a"]), str(r["b"])
            refused = refusals(a, u[i], b, v[i], args.mode)
            total[cls] += 1
            served[cls] += not refused
            for stage in refused:
                anyc[cls][stage] += 1
                if (
                    label == 1
                    and args.examples
                    and len(refused) == 1
                    and len(examples[stage]) < args.examples
                ):
                    examples[stage].append((a, b))
            if len(refused) == 1:
                only[cls][refused[0]] += 1
            if label == 0 and not refused and args.near and len(examples["served"]) < args.examples:
                examples["served"].append((a, b))
        used = [s for s in stages if any(anyc[c][s] for c in total)]
        print(f"\n## {args.mode}, {args.split} split: {title}, per stage (any / only this stage)\n")
        print("| class | pairs | served | " + " | ".join(used) + " |")
        print("|---|---|---|" + "---|" * len(used))
        for cls in sorted(total):
            print(
                f"| {cls} | {total[cls]} | {served[cls] / total[cls]:.1%} | "
                + " | ".join(f"{anyc[cls][s]} / {only[cls][s]}" for s in used)
                + " |"
            )
        for stage, pairs in examples.items():
            print(f"\n{stage}:")
            for a, b in pairs:
                print(f"  {a!r}  /  {b!r}")


if __name__ == "__main__":
    main()
