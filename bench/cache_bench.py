"""Semantic cache benchmark: answer quality on the test split of the pairs bench/data/make_pairs.py
generates, and lookup latency.

Quality: for each pair, the first question's answer is cached and the second one is looked up. A hit on a
paraphrase is right; a hit on a near miss (an order, symbol, attribute, entity, number... changed) or an
unrelated question serves a wrong answer. Printed per class: paraphrase recall and false hits for cosine
alone, cosine + slot checks, and the faq and general modes' operating points (slot checks + classifier).

Latency: the semantic index filled with N entries (default 100,000) spread over tenants and fingerprints,
then lookups as the gateway makes them: embed the last user turn, filtered vector search, verify.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cache_bench.py                 # quality + latency at 100k
    HF_HUB_OFFLINE=1 .venv/bin/python bench/cache_bench.py --entries 0     # quality only
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train_verifier import embed_pairs, load_pairs  # noqa: E402
from policies.cache import slots, verifier  # noqa: E402
from policies.cache.normalize import canonical  # noqa: E402

MODES = ("faq", "general")


def _rate(hit: np.ndarray, mask: np.ndarray) -> str:
    n = int(mask.sum())
    return f"{hit[mask].mean():.1%} ({int(hit[mask].sum())}/{n})" if n else "-"


def quality(split: str) -> None:
    rows = load_pairs(split)
    u, v = embed_pairs(rows)
    cos = np.einsum("ij,ij->i", u, v)
    label = np.array([int(r["label"]) for r in rows])  # type: ignore[call-overload]
    classes = np.array([str(r["class"]) for r in rows])
    started = time.perf_counter()
    ok = np.array([slots.conflict(str(r["a"]), str(r["b"])) is None for r in rows])
    prob = np.array(
        [
            verifier.verify(str(r["a"]), u[i], str(r["b"]), v[i], min_probability=1.0).probability
            for i, r in enumerate(rows)
        ]
    )
    per_pair = (time.perf_counter() - started) / len(rows)
    points = {mode: verifier.operating_point(mode) for mode in MODES}
    # faq is strict: a pair in which each question has a meaning word the other lacks is not served
    strict = ok & ~np.array([slots.unmatched(str(r["a"]), str(r["b"])) for r in rows])
    hits = {
        mode: (cos >= p.threshold) & (strict if mode == "faq" else ok) & (prob >= p.min_probability)
        for mode, p in points.items()
    }
    general = points["general"]
    cosine_only = cos >= general.threshold
    slots_only = cosine_only & ok
    print(f"\n## Quality on the {split} split ({len(rows):,} pairs; families never seen in training)\n")
    print(
        "Operating points: "
        + "; ".join(
            f"{m} cosine >= {p.threshold:.2f}, probability >= {p.min_probability:.2f}"
            for m, p in points.items()
        )
        + "\n"
    )
    print(f"| class | pairs | cosine >= {general.threshold:.2f} alone | + slot checks | faq | general |")
    print("|---|---|---|---|---|---|")
    for kind, title in ((1, "paraphrase recall (higher is better)"), (0, "false hits (lower is better)")):
        print(f"| **{title}** | | | | | |")
        for cls in sorted({c for c, lab in zip(classes, label, strict=True) if lab == kind}):
            mask = (classes == cls) & (label == kind)
            print(
                f"| {cls} | {int(mask.sum()):,} | {_rate(cosine_only, mask)} | {_rate(slots_only, mask)} | "
                f"{_rate(hits['faq'], mask)} | {_rate(hits['general'], mask)} |"
            )
    near = (label == 0) & (classes != "unrelated")
    print(
        f"| all near misses | {int(near.sum()):,} | {_rate(cosine_only, near)} | {_rate(slots_only, near)} | "
        f"{_rate(hits['faq'], near)} | {_rate(hits['general'], near)} |"
    )
    for mode in MODES:
        served = hits[mode]
        right = int((served & (label == 1)).sum())
        print(
            f"\n{mode}: precision {right / max(1, int(served.sum())):.2%} ({right} of {int(served.sum())} hits "
            f"right), paraphrase recall {served[label == 1].mean():.1%}"
        )
    print(f"\nSecond stage (slot checks + classifier) per candidate: {per_pair * 1e6:.0f} µs on average")


async def latency(
    entries: int, lookups: int, index: str, partitions: int, optimize: bool, runtime: str = "auto"
) -> None:
    from policies.cache.config import CacheConfig
    from policies.cache.embedder import Embedder
    from policies.cache.semantic import SemanticIndex, build_index

    rng = np.random.default_rng(1)
    embedder = Embedder(runtime=runtime)
    await embedder.start()
    await embedder.ready()
    semantic = {"index": "qdrant", "url": ":memory:"} if index == "qdrant" else {"index": "edge"}
    store: SemanticIndex = build_index(CacheConfig.model_validate({"semantic": semantic}).semantic)
    await store.start()
    started = time.perf_counter()
    batch = 2000
    questions = [str(r["a"]) for r in load_pairs("test")]
    for offset in range(0, entries, batch):
        n = min(batch, entries - offset)
        vectors = rng.standard_normal((n, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        await store.add_many(
            [
                (
                    vectors[i],
                    {
                        "tenant": f"t{(offset + i) % partitions % 20}",
                        "alias": "chat",
                        "fingerprint": f"f{(offset + i) % partitions}",
                        "text": "synthetic",
                        "entry": f"e{offset + i}",
                        "expires": time.time() + 3600,
                    },
                )
                for i in range(n)
            ]
        )
    fill = time.perf_counter() - started
    optimized = 0.0
    if optimize:
        started = time.perf_counter()
        await store.optimize()  # type: ignore[attr-defined]
        optimized = time.perf_counter() - started
    # the real questions go where the lookups search, so each lookup finds and verifies a candidate
    real = await embedder.embed_many([canonical(q) for q in questions[:200]])
    await store.add_many(
        [
            (
                real[i],
                {
                    "tenant": "t0",
                    "alias": "chat",
                    "fingerprint": "f0",
                    "text": questions[i],
                    "entry": f"q{i}",
                    "expires": time.time() + 3600,
                },
            )
            for i in range(len(real))
        ]
    )
    shipped = verifier.operating_point("general")
    embed_s, search_s, total_s = [], [], []
    deadline = time.perf_counter() + 60
    for i in range(lookups):
        if time.perf_counter() > deadline:
            break
        text = questions[(i * 7) % len(questions)]
        t0 = time.perf_counter()
        vector = await embedder.embed(canonical(text))
        t1 = time.perf_counter()
        found = await store.search(
            vector, tenant="t0", alias="chat", fingerprint="f0", threshold=shipped.threshold, limit=3
        )
        for candidate in found:
            verifier.verify(
                text, vector, candidate.text, candidate.vector, min_probability=shipped.min_probability
            )
        t2 = time.perf_counter()
        embed_s.append(t1 - t0)
        search_s.append(t2 - t1)
        total_s.append(t2 - t0)
    await store.close()
    await embedder.close()
    print(
        f"\n## Lookup latency, {index} index, embedder runtime {runtime}, {entries:,} entries in {partitions} "
        f"partitions (tenant, alias, fingerprint), {len(total_s)} lookups in one of them; filled in {fill:.1f} s"
        + (f", then optimized in {optimized:.1f} s" if optimize else " (optimizing every 20,000 points)")
        + "\n"
    )
    print("| part | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|")
    for name, values in (
        ("embed (worker thread)", embed_s),
        ("search + verify", search_s),
        ("lookup total", total_s),
    ):
        ms = np.array(values) * 1000
        print(
            f"| {name} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 90):.2f} | {np.percentile(ms, 99):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", default="test", choices=("test", "train"))
    parser.add_argument(
        "--entries", type=int, default=100_000, help="entries in the index for the latency run"
    )
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument(
        "--partitions",
        type=int,
        default=100,
        help="distinct (tenant, alias, fingerprint) the entries are spread over; 1 = all in one",
    )
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="edge: build the HNSW graph after filling (as the index does every 20,000 points)",
    )
    parser.add_argument(
        "--index",
        default="edge",
        choices=("edge", "qdrant"),
        help="edge (qdrant-edge-py, the default) or qdrant (qdrant-client's local mode)",
    )
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=("auto", "onnx", "torch"),
        help="the embedder's: ONNX Runtime (auto, when installed) or torch",
    )
    parser.add_argument("--no-quality", action="store_true", help="the latency run only")
    args = parser.parse_args()
    if not args.no_quality:
        quality(args.split)
    if args.entries:
        asyncio.run(
            latency(args.entries, args.lookups, args.index, args.partitions, args.optimize, args.runtime)
        )


if __name__ == "__main__":
    main()
