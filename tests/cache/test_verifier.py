"""The verifier's two stages on the kinds of near miss the issue names, and on paraphrases."""

from __future__ import annotations

import pytest

from policies.cache import slots

NEAR_MISSES = [
    ("What is the capital of France?", "What is the capital of Germany?", "name"),
    ("How do I sort a dict by value?", "How do I sort a dict by key?", "opposite"),
    ("How do I enable Bluetooth?", "How do I disable Bluetooth?", "opposite"),
    ("How do I turn dark mode on?", "How do I turn dark mode off?", "opposite"),
    ("Book a table for Monday.", "Book a table for Tuesday.", "date"),
    ("How do I read a CSV file?", "How do I write a CSV file?", "opposite"),
    ("Round to 2 decimal places", "Round to 3 decimal places", "number"),
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
    ("What is the last train to Boston?", "What is the last train from Boston?", "opposite"),
]
PARAPHRASES = [
    ("What is the capital of France?", "What's France's capital?"),
    ("Round to two decimal places", "Round to 2 decimal places"),
    ("How do I turn off dark mode?", "How can I switch dark mode off?"),
    ("How can I encode base64 in Python?", "In Python, how is base64 encoded?"),
    ("Why doesn't my code compile?", "Why does my code not compile?"),
]


@pytest.mark.parametrize(("a", "b", "slot"), NEAR_MISSES)
def test_slot_checks_catch_near_misses(a: str, b: str, slot: str) -> None:
    assert slots.conflict(a, b) == slot
    assert slots.conflict(b, a) == slot


@pytest.mark.parametrize(("a", "b"), PARAPHRASES)
def test_slot_checks_let_paraphrases_through(a: str, b: str) -> None:
    assert slots.conflict(a, b) is None


def test_shipped_verifier_is_small_and_trained_on_train_only() -> None:
    import json

    from policies.cache import verifier

    data = json.loads(verifier._WEIGHTS.read_text(encoding="utf-8"))
    assert data["trained_on"].endswith("split=train")
    assert verifier._WEIGHTS.stat().st_size < 200_000
    point = verifier.operating_point()
    assert 0 < point.threshold < 1 and 0 < point.min_probability < 1


def test_target_holds_on_the_test_split() -> None:
    """At most 1% of near-miss lookups served, at least 50% of paraphrases hit (bench/cache_bench.py prints
    the whole table)."""
    import numpy as np

    from bench.train_verifier import embed_pairs, load_pairs
    from policies.cache import verifier

    rows = load_pairs("test")
    assert len(rows) >= 500 and not {r["family"] for r in rows} & {r["family"] for r in load_pairs("train")}
    u, v = embed_pairs(rows)
    point = verifier.operating_point()
    hits = np.array([float(u[i] @ v[i]) >= point.threshold and verifier.verify(
        str(r["b"]), v[i], str(r["a"]), u[i], min_probability=point.min_probability).ok for i, r in enumerate(rows)])
    paraphrase = np.array([r["label"] == 1 for r in rows])
    near_miss = np.array([r["kind"] not in ("paraphrase", "unrelated") for r in rows])
    assert hits[near_miss].mean() <= 0.01
    assert hits[paraphrase].mean() >= 0.5
