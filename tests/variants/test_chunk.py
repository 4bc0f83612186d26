"""The embeddings ``chunk`` context policy (docs/variants.md#context-length-policies): an input over the window is
embedded in overlapping token chunks (one upstream call), and the client gets one vector per input: the
chunks' token-weighted mean, unit length; inputs that fit are untouched."""

from __future__ import annotations

import base64
import itertools
import json
import math
from array import array
from typing import Any, cast

import httpx
import openai
import pytest

from gateway.auth import hash_key
from policies import chunking
from policies.tokens import encoding_for
from tests.conftest import KEY, UPSTREAM_KEY

WINDOW = 100
OVERLAP = 10
TOKENIZED = "text-embedding-3-small"  # cut with its own tokenizer (cl100k_base)
LONG = " ".join(f"sentence {i} says something about topic {i % 7}." for i in range(60))  # ~600 tokens


def _config(url: str, model: str, policy: str = "chunk") -> str:
    dep = json.dumps(
        {
            "provider": "openai-compatible",
            "model": model,
            "name": "e",
            "api_base": f"{url}/v1",
            "api_key": UPSTREAM_KEY,
            "context_window": WINDOW,
        }
    )
    return f"""
models:
  - name: embed
    deployments: [{dep}]
    context: {{policy: {policy}, chunk_overlap: {OVERLAP}}}
tenants:
  - {{name: acme, keys: ["{hash_key(KEY)}"]}}
"""


def _embedding_calls(state: Any) -> list[Any]:
    return [seen.body for seen in state.requests if seen.path.endswith("/embeddings")]


def _fake_vectors(url: str, chunks: list[str]) -> list[list[float]]:
    """What the fake upstream answers for these inputs (asked directly: it is deterministic)."""
    answer = httpx.post(
        f"{url}/v1/embeddings",
        json={"model": "m", "input": chunks},
        headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
    ).json()
    return [item["embedding"] for item in sorted(answer["data"], key=lambda item: item["index"])]


def _unit_mean(vectors: list[list[float]], weights: list[int]) -> list[float]:
    mean = [
        sum(w * v[d] for v, w in zip(vectors, weights, strict=True)) / sum(weights)
        for d in range(len(vectors[0]))
    ]
    norm = math.sqrt(sum(x * x for x in mean))
    return [x / norm for x in mean]


def test_an_input_over_the_window_is_embedded_in_chunks_and_averaged(upstream, start_gateway):
    server, state = upstream
    gateway = start_gateway(_config(server.url, TOKENIZED))
    encoding = encoding_for(TOKENIZED)
    assert encoding is not None
    tokens = list(encoding.encode_ordinary(LONG))
    assert len(tokens) > 4 * WINDOW
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        raw = client.embeddings.with_raw_response.create(
            model="embed", input=[LONG, "short one"], encoding_format="float"
        )
    answer = raw.parse()

    calls = _embedding_calls(state)
    assert len(calls) == 1  # every chunk in one upstream request
    sent = calls[0]["input"]
    chunks, short = sent[:-1], sent[-1]
    assert short == "short one"
    pieces = [list(encoding.encode_ordinary(chunk)) for chunk in chunks]
    assert all(len(p) <= WINDOW for p in pieces)
    assert len(chunks) == math.ceil((len(tokens) - OVERLAP) / (WINDOW - OVERLAP))
    for before, after in itertools.pairwise(pieces):
        assert before[-OVERLAP:] == after[:OVERLAP]  # consecutive chunks share OVERLAP tokens
    rebuilt = pieces[0] + [t for p in pieces[1:] for t in p[OVERLAP:]]
    assert rebuilt == tokens  # nothing lost, nothing added
    assert raw.headers["x-gateway-context-chunked"] == f"1 inputs into {len(chunks)} chunks"

    assert [item.index for item in answer.data] == [0, 1]
    expected = _unit_mean(_fake_vectors(server.url, chunks), [len(p) for p in pieces])
    assert answer.data[0].embedding == pytest.approx(expected, abs=1e-9)
    assert answer.data[1].embedding == _fake_vectors(server.url, ["short one"])[0]  # untouched
    assert answer.usage.prompt_tokens == len(sent)  # billed as the upstream counted what was sent


def test_without_a_tokenizer_chunks_follow_the_estimate(upstream, start_gateway):
    server, state = upstream
    gateway = start_gateway(_config(server.url, "model-e"))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        answer = client.embeddings.create(model="embed", input=LONG)  # base64, as the SDK asks by default
    sent = _embedding_calls(state)[0]["input"]
    assert len(sent) > 1
    per_token = 4 / 1.1  # the documented estimate with its 10% margin
    overlap = int(OVERLAP * per_token)
    assert all(math.ceil(len(chunk) / per_token) <= WINDOW for chunk in sent)
    assert all(a[-overlap:] == b[:overlap] for a, b in itertools.pairwise(sent))
    assert sent[0] + "".join(chunk[overlap:] for chunk in sent[1:]) == LONG
    assert len(answer.data) == 1
    vector = list(answer.data[0].embedding)
    assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-6)


def test_other_policies_leave_embeddings_alone(upstream, start_gateway):
    server, state = upstream
    gateway = start_gateway(_config(server.url, TOKENIZED, policy="fallback"))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        raw = client.embeddings.with_raw_response.create(model="embed", input=LONG)
    assert _embedding_calls(state)[0]["input"] == LONG
    assert "x-gateway-context-chunked" not in raw.headers


def test_base64_vectors_are_combined_and_given_back_as_base64():
    def b64(values: list[float]) -> str:
        return base64.b64encode(array("f", values).tobytes()).decode()

    plan = chunking.ChunkPlan(groups=((0, 1), (2,)), weights=((3, 1), (1,)))
    data = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": b64(v)}
            for i, v in enumerate([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
        ],
    }
    combined = chunking.combine(plan, data)["data"]
    first = array("f")
    first.frombytes(base64.b64decode(combined[0]["embedding"]))
    assert list(first) == pytest.approx([3 / math.sqrt(10), 1 / math.sqrt(10)])
    assert combined[1] == {"object": "embedding", "index": 1, "embedding": b64([0.5, 0.5])}


def test_chunk_spans_overlap_and_cover():
    assert chunking.spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert chunking.spans(4, 4, 1) == [(0, 4)]
    assert chunking.spans(9, 4, 9) == [(0, 4), (2, 6), (4, 8), (6, 9)]  # overlap held to half a chunk


def test_chunk_vectors_all_gives_every_chunks_vector(upstream, start_gateway):
    server, state = upstream
    gateway = start_gateway(_config(server.url, TOKENIZED))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        answer = client.embeddings.create(
            model="embed",
            input=["short one", LONG],
            encoding_format="float",
            extra_body={"chunk_vectors": "all"},
        )
        sent = _embedding_calls(state)[0]
        assert "chunk_vectors" not in sent  # the gateway's own field is not sent upstream
        vectors = _fake_vectors(server.url, sent["input"])
        items = [item.model_dump() for item in answer.data]
        assert [(i["index"], i["chunk"]) for i in items] == [(0, 0)] + [
            (1, k) for k in range(len(sent["input"]) - 1)
        ]
        assert [i["embedding"] for i in items] == vectors  # each chunk's own vector, in order

        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="embed", input="x", extra_body={"chunk_vectors": "some"})
        assert cast("dict[str, Any]", info.value.body)["param"] == "chunk_vectors"


def test_the_cache_keeps_the_chunks_vectors_and_each_request_gets_what_it_asked(upstream, start_gateway):
    server, state = upstream
    gateway = start_gateway("cache: {enabled: true}\n" + _config(server.url, TOKENIZED))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        mean = client.embeddings.with_raw_response.create(model="embed", input=LONG, encoding_format="float")
        every = client.embeddings.with_raw_response.create(
            model="embed", input=LONG, encoding_format="float", extra_body={"chunk_vectors": "all"}
        )
        again = client.embeddings.with_raw_response.create(model="embed", input=LONG, encoding_format="float")
    assert len(_embedding_calls(state)) == 1  # the two later ones from the cache
    assert [r.headers["x-cache"] for r in (mean, every, again)] == ["miss", "hit-exact", "hit-exact"]
    chunks = _embedding_calls(state)[0]["input"]
    assert [item.embedding for item in every.parse().data] == _fake_vectors(server.url, chunks)
    assert len(mean.parse().data) == len(again.parse().data) == 1
    assert again.parse().data[0].embedding == mean.parse().data[0].embedding
