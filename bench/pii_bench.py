"""PII detector: recall and precision per kind on bench/data/pii_testset.jsonl (written for this project:
positives in many formats, hard negatives such as dates, prices, order numbers, versions that fail checksums,
and names/addresses/record numbers a pattern detector is not meant to find), and latency per 1k tokens.

    PYTHONPATH=. python bench/pii_bench.py
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from gateway.security.pii import KINDS, Detector

DATA = Path(__file__).resolve().parent / "data"
# pii_testset.jsonl was used while writing the patterns; pii_heldout.jsonl was written after, and not tuned on.
SETS = ("pii_testset.jsonl", "pii_heldout.jsonl")


def main() -> None:
    detector = Detector()
    for name in SETS:
        print(f"== {name}")
        score(detector, [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()])
    latency(
        detector, [json.loads(line) for line in (DATA / SETS[0]).read_text().splitlines() if line.strip()]
    )


def score(detector: Detector, rows: list[dict]) -> None:
    found: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for row in rows:
        truth = {(kind, value) for kind, value in row["pii"]}
        got = {(s.kind, row["text"][s.start : s.end]) for s in detector.find(row["text"])}
        for kind, _ in truth:
            expected[kind] += 1
        for kind, _ in got:
            found[kind] += 1
        for item in truth & got:
            hits[item[0]] += 1
    print(f"{len(rows)} texts, {sum(expected.values())} PII items\n")
    print(f"{'kind':<12} {'expected':>8} {'found':>6} {'correct':>7} {'recall':>7} {'precision':>9}")
    kinds = [*KINDS, *sorted(set(expected) - set(KINDS))]
    for kind in kinds:
        recall = hits[kind] / expected[kind] if expected[kind] else float("nan")
        precision = hits[kind] / found[kind] if found[kind] else float("nan")
        print(
            f"{kind:<12} {expected[kind]:>8} {found[kind]:>6} {hits[kind]:>7} {recall:>7.2f} {precision:>9.2f}"
        )
    in_scope = [k for k in KINDS if expected[k]]
    recall = sum(hits[k] for k in in_scope) / sum(expected[k] for k in in_scope)
    precision = sum(hits.values()) / max(1, sum(found.values()))
    print(
        f"\nkinds in scope: recall {recall:.3f}, precision {precision:.3f}; "
        f"all kinds (names, addresses, record numbers too): recall {sum(hits.values()) / sum(expected.values()):.3f}\n"
    )


def latency(detector: Detector, rows: list[dict]) -> None:
    # latency: a 1k-token text (about 4,000 characters) with some PII in it, and one without any
    filler = " ".join(row["text"] for row in rows)
    clean = ("The quarterly report covers revenue, costs and the outlook for the next year. " * 60)[:4000]
    for name, text in (("with PII", (filler * 2)[:4000]), ("without PII", clean)):
        runs = 300
        started = time.perf_counter()
        for _ in range(runs):
            detector.find(text)
        per = (time.perf_counter() - started) / runs
        print(f"latency per 1k tokens ({name}): {per * 1000:.3f} ms")


if __name__ == "__main__":
    main()
