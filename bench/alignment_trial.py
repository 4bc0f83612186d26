"""Trial of a second stage that sees word alignment (issue 13, second round; not adopted, docs/cache.md).

Per word (its word pieces averaged), the contextual vectors of MiniLM's last hidden state, the output the
embedding pools; for each content word of one question its best cosine with the other's words, as BERTScore
aligns. Features per pair: the smallest and mean best match, the words under 0.5 / 0.6 / 0.7 (summed, worst
side, best side), the ratio of content-word counts; a logistic regression over them with the cosine and the
shipped classifier's overlap features, trained on the pairs at cosine >= 0.74 that pass the slot checks.
Out of fold on the train split (5 folds by family, as bench/train_verifier.py); the test split is not read.
Printed: the trainer's best point (one cosine threshold and a probability) and the best two-tier point (slot
checks alone at >= 0.87, the classifier's probability below that).

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/alignment_trial.py   # ~3 min on 2 shared cores
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import train_verifier as tv  # noqa: E402
from policies.cache import slots, verifier  # noqa: E402
from policies.cache.embedder import OnnxEncoder, model_path  # noqa: E402
from policies.cache.normalize import canonical  # noqa: E402

REGION = 0.74  # the classifier learns where it would decide: pairs this close that the slot checks pass


def word_vectors(texts: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per canonical text: one unit vector per word (word pieces averaged) and which words are content words."""
    encoder = OnnxEncoder(model_path())
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(texts), 64):
        chunk = texts[start : start + 64]
        encoded = encoder.tokenizer.encode_batch(chunk)
        arrays = [
            np.array([getattr(e, f) for e in encoded], dtype=np.int64)
            for f in ("ids", "attention_mask", "type_ids")
        ]
        hidden = encoder.session.run(None, dict(zip(encoder.inputs, arrays, strict=True)))[0]
        for row, (text, e) in enumerate(zip(chunk, encoded, strict=True)):
            pieces: dict[int, list[int]] = {}
            for i, word_id in enumerate(e.word_ids):
                if word_id is not None and e.attention_mask[i]:
                    pieces.setdefault(word_id, []).append(i)
            vectors, content = [], []
            for idx in pieces.values():
                word = text[e.offsets[idx[0]][0] : e.offsets[idx[-1]][1]].lower()
                if re.search(r"[a-z0-9]", word):
                    v = hidden[row, idx].mean(axis=0)
                    vectors.append(v / (np.linalg.norm(v) + 1e-9))
                    content.append(word not in verifier._STOPWORDS)
            if not vectors:
                vectors, content = [np.zeros(hidden.shape[-1], dtype=np.float32)], [False]
            out[text] = (np.stack(vectors), np.array(content))
    return out


def _side(best: np.ndarray, content: np.ndarray) -> list[float]:
    b = best[content] if content.any() else best
    return [float(b.min()), float(b.mean()), *(float((b < t).sum()) for t in (0.5, 0.6, 0.7))]


def alignment(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Symmetric, so one row serves both orders of the pair."""
    sim = a[0] @ b[0].T
    x, y = _side(sim.max(axis=1), a[1]), _side(sim.max(axis=0), b[1])
    f = [min(x[0], y[0]), (x[1] + y[1]) / 2, min(x[1], y[1])]
    for k in (2, 3, 4):
        f += [x[k] + y[k], max(x[k], y[k]), min(x[k], y[k])]
    counts = sorted((int(a[1].sum()), int(b[1].sum())))
    return np.array([*f, counts[0] / max(1, counts[1])], dtype=np.float32)


def main() -> None:
    rows = tv.load_pairs("train")
    u, v = tv.embed_pairs(rows)
    x, flipped = tv.design(rows, u, v)
    words = word_vectors(sorted({canonical(str(r[k])) for r in rows for k in ("a", "b")}))
    align = np.stack([alignment(words[canonical(str(r["a"]))], words[canonical(str(r["b"]))]) for r in rows])
    small, small_flipped = np.hstack([x[:, :9], align]), np.hstack([flipped[:, :9], align])
    y = np.array([int(r["label"]) for r in rows])  # type: ignore[call-overload]
    families = np.array([str(r["family"]) for r in rows])
    cos = np.einsum("ij,ij->i", u, v)
    ok = np.array([slots.conflict(str(r["a"]), str(r["b"])) is None for r in rows])
    same = ok & np.array([slots.same_words(str(r["a"]), str(r["b"])) for r in rows])
    region = (cos >= REGION) & ok & ~same
    groups = tv.near_miss_groups(rows)

    out_of_fold = np.zeros(len(rows))
    for held in np.array_split(np.random.default_rng(7).permutation(np.unique(families)), 5):
        test = np.isin(families, held)
        train = ~test & region
        both = np.concatenate([small[train], small_flipped[train]])
        params = tv.fit(both, np.concatenate([y[train], y[train]]), 0.05)
        out_of_fold[test] = tv.predict(params, small[test], small_flipped[test])
    out_of_fold[same] = 1.0
    tv.COSINES = np.round(np.arange(0.74, 0.951, 0.01), 2)
    c, p, recall, worst = tv.choose(cos, out_of_fold, ok, y, groups, tv.TARGET)
    print(
        f"one point: cosine >= {c:.2f}, probability >= {p:.2f}: recall {recall:.1%}, worst class {worst:.2%}"
    )
    best = (-1.0, 0.0, 0.0, 0.0)
    for low in np.round(np.arange(0.76, 0.87, 0.01), 2):
        for p in tv.PROBABILITIES:
            hit = ok & ((cos >= 0.87) | ((cos >= low) & (out_of_fold >= p)))
            worst = max(float(hit[mask].mean()) for mask in groups.values())
            if worst <= tv.TARGET and float(hit[y == 1].mean()) > best[0]:
                best = (float(hit[y == 1].mean()), float(low), float(p), worst)
    print(
        f"two tiers: slots alone at >= 0.87, probability >= {best[2]:.2f} from {best[1]:.2f}: "
        f"recall {best[0]:.1%}, worst class {best[3]:.2%}"
    )


if __name__ == "__main__":
    main()
