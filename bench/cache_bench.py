"""Semantic cache benchmark: answer quality on the test split of bench/data/pairs.jsonl, and lookup latency.

Quality: for each pair, the first question's answer is cached and the second one is looked up. A hit on a
paraphrase is right; a hit on a near miss (one answer-changing word changed) or an unrelated question serves
a wrong answer. Printed per operating point (cosine threshold of the vector search): precision, paraphrase
recall, and the false-hit rate on near misses, for cosine alone and for cosine + the verifier.

Latency: the semantic index filled with N entries (default 100,000) spread over tenants and fingerprints,
then lookups as the gateway makes them: embed the last user turn, filtered vector search, verify.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cache_bench.py                 # quality + latency at 100k
    HF_HUB_OFFLINE=1 .venv/bin/python bench/cache_bench.py --entries 0     # quality only
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train_verifier import design, embed_pairs, load_pairs  # noqa: E402
from policies.cache import slots, verifier  # noqa: E402

THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.90, 0.93, 0.96)


def _row(name: str, hit: np.ndarray, label: np.ndarray, near_miss: np.ndarray, unrelated: np.ndarray) -> str:
    served = int(hit.sum())
    right = int((hit & (label == 1)).sum())
    precision = right / served if served else 1.0
    recall = float(hit[label == 1].mean())
    return (f"| {name} | {precision:.1%} | {recall:.1%} | {hit[near_miss].mean():.1%} "
            f"({int(hit[near_miss].sum())}/{int(near_miss.sum())}) | {hit[unrelated].mean():.1%} |")


def quality(split: str) -> None:
    rows = load_pairs(split)
    u, v = embed_pairs(rows)
    cos = np.einsum("ij,ij->i", u, v)
    label = np.array([int(r["label"]) for r in rows])  # type: ignore[call-overload]
    near_miss = np.array([r["kind"] not in ("paraphrase", "unrelated") for r in rows])
    unrelated = np.array([r["kind"] == "unrelated" for r in rows])
    ok = np.array([slots.conflict(str(r["a"]), str(r["b"])) is None for r in rows])
    x = design(rows, u, v)
    coef, intercept, mean, scale = verifier._model()
    prob = 1.0 / (1.0 + np.exp(-(((x - mean) / scale) @ coef + intercept)))
    shipped = verifier.operating_point()
    print(f"\n## Quality on the {split} split: {int((label == 1).sum())} paraphrases, {int(near_miss.sum())} near "
          f"misses, {int(unrelated.sum())} unrelated (verifier probability >= {shipped.min_probability:.2f})\n")
    print("| operating point | precision | paraphrase recall | near-miss false hits | unrelated false hits |")
    print("|---|---|---|---|---|")
    for threshold in sorted({*THRESHOLDS, shipped.threshold}):
        near = cos >= threshold
        mark = " (default)" if threshold == shipped.threshold else ""
        print(_row(f"cosine >= {threshold:.2f}{mark}", near, label, near_miss, unrelated))
        print(_row(f"cosine >= {threshold:.2f} + slots", near & ok, label, near_miss, unrelated))
        print(_row(f"cosine >= {threshold:.2f} + slots + classifier{mark}", near & ok & (prob >= shipped.min_probability),
                   label, near_miss, unrelated))
    by_kind: dict[str, list[bool]] = {}
    hit = (cos >= shipped.threshold) & ok & (prob >= shipped.min_probability)
    for r, h in zip(rows, hit, strict=True):
        by_kind.setdefault(str(r["kind"]), []).append(bool(h))
    print("\nHits at the default operating point by kind: " + ", ".join(
        f"{k} {sum(h)}/{len(h)}" for k, h in sorted(by_kind.items())))
    # what the verifier alone costs per candidate (the embeddings are already there)
    timings = []
    for i, r in enumerate(rows[:300]):
        start = time.perf_counter()
        verifier.verify(str(r["a"]), u[i], str(r["b"]), v[i], min_probability=shipped.min_probability)
        timings.append(time.perf_counter() - start)
    print(f"\nVerifier time per candidate: p50 {statistics.median(timings) * 1e6:.0f} µs, "
          f"p99 {np.percentile(timings, 99) * 1e6:.0f} µs")


async def latency(entries: int, lookups: int, index: str, partitions: int, optimize: bool) -> None:
    from policies.cache.config import CacheConfig
    from policies.cache.embedder import Embedder
    from policies.cache.semantic import SemanticIndex, build_index

    rng = np.random.default_rng(1)
    embedder = Embedder()
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
        await store.add_many([
            (vectors[i], {"tenant": f"t{(offset + i) % partitions % 20}", "alias": "chat",
                          "fingerprint": f"f{(offset + i) % partitions}", "text": "synthetic",
                          "entry": f"e{offset + i}", "expires": time.time() + 3600})
            for i in range(n)])
    fill = time.perf_counter() - started
    optimized = 0.0
    if optimize:
        started = time.perf_counter()
        await store.optimize()  # type: ignore[attr-defined]
        optimized = time.perf_counter() - started
    # the real questions go where the lookups search, so each lookup finds and verifies a candidate
    real = await embedder.embed_many(questions[:200])
    await store.add_many([(real[i], {"tenant": "t0", "alias": "chat", "fingerprint": "f0", "text": questions[i],
                                     "entry": f"q{i}", "expires": time.time() + 3600}) for i in range(len(real))])
    shipped = verifier.operating_point()
    embed_s, search_s, total_s = [], [], []
    deadline = time.perf_counter() + 60
    for i in range(lookups):
        if time.perf_counter() > deadline:
            break
        text = questions[(i * 7) % len(questions)]
        t0 = time.perf_counter()
        vector = await embedder.embed(text)
        t1 = time.perf_counter()
        found = await store.search(vector, tenant="t0", alias="chat", fingerprint="f0", threshold=shipped.threshold,
                                   limit=3)
        for candidate in found:
            verifier.verify(text, vector, candidate.text, candidate.vector, min_probability=shipped.min_probability)
        t2 = time.perf_counter()
        embed_s.append(t1 - t0)
        search_s.append(t2 - t1)
        total_s.append(t2 - t0)
    await store.close()
    await embedder.close()
    print(f"\n## Lookup latency, {index} index, {entries:,} entries in {partitions} partitions (tenant, alias, "
          f"fingerprint), {len(total_s)} lookups in one of them; filled in {fill:.1f} s"
          + (f", then optimized in {optimized:.1f} s" if optimize else " (optimizing every 20,000 points)") + "\n")
    print("| part | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|")
    for name, values in (("embed (worker thread)", embed_s), ("search + verify", search_s), ("lookup total", total_s)):
        ms = np.array(values) * 1000
        print(f"| {name} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 90):.2f} | {np.percentile(ms, 99):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", choices=("test", "train"))
    parser.add_argument("--entries", type=int, default=100_000, help="entries in the index for the latency run")
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--partitions", type=int, default=100,
                        help="distinct (tenant, alias, fingerprint) the entries are spread over; 1 = all in one")
    parser.add_argument("--optimize", action="store_true",
                        help="edge: build the HNSW graph after filling (as the index does every 20,000 points)")
    parser.add_argument("--index", default="edge", choices=("edge", "qdrant"),
                        help="edge (qdrant-edge-py, the default) or qdrant (qdrant-client's local mode)")
    args = parser.parse_args()
    quality(args.split)
    if args.entries:
        asyncio.run(latency(args.entries, args.lookups, args.index, args.partitions, args.optimize))


if __name__ == "__main__":
    main()
