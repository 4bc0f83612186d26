"""The exact cache is bounded in bytes: twenty embeddings calls of 512 inputs each (212 MB held before) stay
under ``cache.max_bytes``, and an answer over ``max_entry_bytes`` is not kept."""

from __future__ import annotations

import httpx

from gateway.keys import GATEWAY
from tests.conftest import KEY, config_text

CACHE = """
cache:
  enabled: true
  max_bytes: 300000
  max_entry_bytes: 100000
"""


def test_twenty_big_embeddings_calls_stay_under_the_byte_cap(start_gateway, upstream):
    gateway = start_gateway(config_text(upstream[0].url) + CACHE)
    auth = {"Authorization": f"Bearer {KEY}"}
    sizes = []
    with httpx.Client(base_url=gateway.url, headers=auth, timeout=30) as http:
        for call in range(20):
            inputs = [f"call {call} input {i} " + "word " * 8 for i in range(512)]
            response = http.post("/v1/embeddings", json={"model": "embed", "input": inputs})
            assert response.status_code == 200 and len(response.json()["data"]) == 512
            sizes.append(len(response.content))
        small = {"model": "embed", "input": ["one short input"]}
        assert http.post("/v1/embeddings", json=small).headers["x-cache"] == "miss"
        assert (
            http.post("/v1/embeddings", json=small).headers["x-cache"] == "hit-exact"
        )  # small ones still cached
        last = {"model": "embed", "input": [f"call 19 input {i} " + "word " * 8 for i in range(512)]}
        assert http.post("/v1/embeddings", json=last).headers["x-cache"] == "hit-exact"
        first = {"model": "embed", "input": [f"call 0 input {i} " + "word " * 8 for i in range(512)]}
        assert http.post("/v1/embeddings", json=first).headers["x-cache"] == "miss"  # evicted for bytes
        huge = {"model": "embed", "input": [f"huge {i} " + "word " * 8 for i in range(4096)]}
        http.post("/v1/embeddings", json=huge)
        assert http.post("/v1/embeddings", json=huge).headers["x-cache"] == "miss"  # over max_entry_bytes
    assert sum(sizes) > 2 * 300_000  # what was answered would not have fit
    store = gateway.app[GATEWAY].pipeline.cache.answers
    assert 0 < store.bytes <= 300_000
