"""The edge vector index: filters, expiry, purge, the background optimization, a persistent folder that one
process owns at a time."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from policies.cache import semantic
from policies.cache.config import SemanticConfig
from policies.cache.semantic import EdgeIndex


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _payload(i: int, tenant: str = "acme", fingerprint: str = "f", ttl: float = 60) -> dict[str, object]:
    return {
        "tenant": tenant,
        "alias": "chat",
        "fingerprint": fingerprint,
        "text": f"q{i}",
        "entry": f"e{i}",
        "expires": time.time() + ttl,
    }


async def test_search_filters_on_everything_and_expiry(tmp_path: Path) -> None:
    index = EdgeIndex(SemanticConfig(path=str(tmp_path)))
    await index.start()
    try:
        vector = _unit(np.random.default_rng(0), 1)[0]
        await index.add_many(
            [
                (vector, _payload(0)),
                (vector, _payload(1, tenant="globex")),
                (vector, _payload(2, fingerprint="g")),
                (vector, _payload(3, ttl=-1)),
            ]
        )
        found = await index.search(
            vector, tenant="acme", alias="chat", fingerprint="f", threshold=0.9, limit=5
        )
        assert [c.entry for c in found] == ["e0"]
        assert found[0].score == pytest.approx(1.0, abs=1e-4) and found[0].text == "q0"
        assert not await index.search(
            vector, tenant="acme", alias="other", fingerprint="f", threshold=0.5, limit=5
        )
        await index.purge("acme")
        assert not await index.search(
            vector, tenant="acme", alias="chat", fingerprint="f", threshold=0.5, limit=5
        )
        assert await index.search(
            vector, tenant="globex", alias="chat", fingerprint="f", threshold=0.5, limit=5
        )
    finally:
        await index.close()


async def test_background_optimization_keeps_answers_findable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(semantic, "OPTIMIZE_EVERY", 100)
    index = EdgeIndex(SemanticConfig(path=str(tmp_path)))
    await index.start()
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 300)
    try:
        for start in range(0, 300, 50):
            await index.add_many([(vectors[i], _payload(i)) for i in range(start, start + 50)])
        assert index._optimizing is not None  # started by itself past OPTIMIZE_EVERY points
        await index.optimize()
        for i in (0, 150, 299):
            found = await index.search(
                vectors[i], tenant="acme", alias="chat", fingerprint="f", threshold=0.99, limit=1
            )
            assert [c.entry for c in found] == [f"e{i}"]
    finally:
        await index.close()


async def test_a_persistent_folder_is_reopened_and_owned_by_one_process(tmp_path: Path) -> None:
    vector = _unit(np.random.default_rng(2), 1)[0]
    first = EdgeIndex(SemanticConfig(path=str(tmp_path)))
    await first.start()
    await first.add_many([(vector, _payload(7))])
    second = EdgeIndex(SemanticConfig(path=str(tmp_path)))  # a second worker given the same path
    await second.start()
    try:
        assert not await second.search(
            vector, tenant="acme", alias="chat", fingerprint="f", threshold=0.5, limit=1
        )
    finally:
        await second.close()
        await first.close()
    reopened = EdgeIndex(SemanticConfig(path=str(tmp_path)))
    await reopened.start()
    try:
        found = await reopened.search(
            vector, tenant="acme", alias="chat", fingerprint="f", threshold=0.5, limit=1
        )
        assert [c.entry for c in found] == ["e7"]
    finally:
        await reopened.close()
