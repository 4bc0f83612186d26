"""The second stage of a semantic hit: is the cached question the same question, or a near miss?

A candidate from the vector search is served only if (1) no answer-changing slot differs (``slots.py``:
symbols, quoted strings, the order around "to", "than", "owes"..., numbers, dates, negations, names,
opposites, a word swapped in the same sentence) and (2) a logistic classifier over the two MiniLM embeddings,
their word overlap and word order says "same question" with probability at least ``min_probability``. The
classifier was trained by ``bench/train_verifier.py`` on the train split of the pairs that
``bench/data/make_pairs.py`` generates; its weights ship as ``data/verifier.json``. Both stages take
tens of microseconds: the embeddings are already there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import cache
from pathlib import Path

import numpy as np

from . import slots
from .normalize import canonical

_WEIGHTS = Path(__file__).resolve().parent / "data" / "verifier.json"
_WORD = re.compile(r"[a-z0-9][a-z0-9+#.'-]*[a-z0-9+#]|[a-z0-9]")
_STOPWORDS = frozenset(
    """
a an the of to in on for at by with from into and or is are was were be been do does did can could should would
will shall may might must i me my we our you your it its this that these those what whats what's which who whom
how when where why there here please tell show give me name explain find get way best good right easiest some any
s 's about as if so than then just also much many more most very way ok okay like need want know help use using
""".split()
)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    probability: float
    reason: str | None  # why not: a slot name, or "classifier"


def content_words(text: str) -> frozenset[str]:
    return frozenset(slots._stem(w) for w in _WORD.findall(canonical(text).lower()) if w not in _STOPWORDS)


def _order(a: str, b: str) -> tuple[float, float, float]:
    """Order-aware: the share of shared words that appear in the other order, and how the word sequences
    differ (replaced spans, words only one has)."""
    x, y = slots.extract(a).words, slots.extract(b).words
    shared = [w for w in dict.fromkeys(x) if w in y and w not in _STOPWORDS]
    where = {w: y.index(w) for w in shared}
    pairs = [(p, q) for i, p in enumerate(shared) for q in shared[i + 1 :]]
    discordant = sum(1 for p, q in pairs if where[p] > where[q]) / len(pairs) if pairs else 0.0
    ops = [op for op in SequenceMatcher(None, x, y, autojunk=False).get_opcodes() if op[0] != "equal"]
    replaced = sum(1 for op in ops if op[0] == "replace")
    return discordant, float(replaced), float(len(ops))


def features(a: str, u: np.ndarray, b: str, v: np.ndarray) -> np.ndarray:
    """What the classifier sees: cosine, word overlap and order, the two vectors' product and distance per
    dimension."""
    x, y = content_words(a), content_words(b)
    union = len(x | y) or 1
    only_x, only_y = len(x - y), len(y - x)
    overlap = np.array(
        [
            float(u @ v),
            len(x & y) / union,
            min(only_x, only_y),
            max(only_x, only_y),
            float(only_x > 0 and only_y > 0),  # a word swapped for another: the near-miss shape
            float(only_x == 1 and only_y == 1),
            *_order(a, b),
        ],
        dtype=np.float32,
    )
    return np.concatenate([overlap, u * v, np.abs(u - v)])


@cache
def _model() -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    data = json.loads(_WEIGHTS.read_text(encoding="utf-8"))
    return (
        np.asarray(data["coef"], dtype=np.float32),
        float(data["intercept"]),
        np.asarray(data["mean"], dtype=np.float32),
        np.asarray(data["scale"], dtype=np.float32),
    )


def probability(a: str, u: np.ndarray, b: str, v: np.ndarray) -> float:
    """The classifier's probability that ``a`` and ``b`` ask the same thing."""
    coef, intercept, mean, scale = _model()
    # both orders: which question was cached first must not change the verdict
    x = np.stack([features(a, u, b, v), features(b, v, a, u)])
    z = ((x - mean) / scale) @ coef + intercept
    return float(np.mean(1.0 / (1.0 + np.exp(-z))))


def verify(
    a: str, u: np.ndarray, b: str, v: np.ndarray, *, min_probability: float, strict: bool = False
) -> Verdict:
    """Whether the answer cached for ``b`` (vector ``v``) may answer ``a`` (vector ``u``). ``strict`` (the faq
    mode) also refuses a pair in which each question has a meaning word the other lacks."""
    slot = slots.conflict(a, b)
    if slot is None and strict and slots.unmatched(a, b):
        slot = "unmatched"
    if slot is not None:
        return Verdict(ok=False, probability=0.0, reason=slot)
    if slots.same_words(a, b):  # the same meaning words, no slot differs: only the phrasing changed
        return Verdict(ok=True, probability=1.0, reason=None)
    p = probability(a, u, b, v)
    return Verdict(
        ok=p >= min_probability, probability=p, reason=None if p >= min_probability else "classifier"
    )


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    threshold: float  # cosine the vector search asks for
    min_probability: float  # the classifier's probability the verifier asks for


@cache
def operating_point(mode: str = "general") -> OperatingPoint:
    """A mode's operating point (``faq`` or ``general``), chosen at training time out-of-fold on the train split
    (bench/train_verifier.py)."""
    data = json.loads(_WEIGHTS.read_text(encoding="utf-8"))
    point = data["modes"][mode] if "modes" in data else data  # weights from before modes: one point for all
    return OperatingPoint(
        threshold=float(point["threshold"]), min_probability=float(point["min_probability"])
    )
