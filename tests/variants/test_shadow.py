"""Shadow traffic, a variant's own price, and usage by variant (docs/variants.md): shadow requests go to the
shadow variant after the client's answer, never hold it up or change it, and are recorded (latency, tokens,
cost, errors, similarity) in the stats, /metrics and the ledger; a variant's price replaces the deployment's."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.auth import hash_key, new_key
from policies.clock import ManualClock
from policies.shadow import word_similarity
from tests.conftest import KEY, UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeState
from tests.fakes.openai_upstream import build_app as build_fake
from tests.harness import ServerThread
from tests.ops.gateway_process import poll

ADMIN_KEY = new_key()
START = 1_800_000_000.0
V1_PRICE = {"input": 2.0, "output": 8.0}  # the deployment's (USD per million tokens)
V2_PRICE = {"input": 300.0, "output": 1200.0}  # the shadow variant's own


@pytest.fixture
def candidate() -> Iterator[tuple[ServerThread, FakeState]]:
    state = FakeState(api_key=UPSTREAM_KEY)
    server = ServerThread(lambda: build_fake(state)).start()
    yield server, state
    if state.hold_requests is not None:
        state.hold_requests.set()  # a test that failed while holding: its requests end now
    server.stop()


def _config(stable_url: str, candidate_url: str, share: float | None = 1.0) -> str:
    deps = [
        {
            "provider": "openai-compatible",
            "model": "model-a",
            "name": "a",
            "api_base": f"{stable_url}/v1",
            "api_key": UPSTREAM_KEY,
            "price": V1_PRICE,
        },
        {
            "provider": "openai-compatible",
            "model": "model-b",
            "name": "b",
            "api_base": f"{candidate_url}/v1",
            "api_key": UPSTREAM_KEY,
            "price": V1_PRICE,
        },
        {
            "provider": "openai-compatible",
            "model": "error-503",
            "name": "broken",
            "api_base": f"{stable_url}/v1",
            "api_key": UPSTREAM_KEY,
        },
    ]
    variants = {
        "v1": {"deployments": ["a"], "weight": 1, "shadow": {"variant": "v2", "share": share}},
        "v2": {"deployments": ["b"], "weight": 0, "price": V2_PRICE, "system_prompt": "Be brief."},
        "v3": {"deployments": ["broken"], "weight": 0},
    }
    if share is None:
        del variants["v1"]["shadow"]
    return f"""
admin: {{keys: ["{hash_key(ADMIN_KEY)}"]}}
models:
  - name: chat
    deployments: {json.dumps(deps)}
    retry: {{attempts: 1}}
    variants: {json.dumps(variants)}
tenants:
  - {{name: acme, keys: ["{hash_key(KEY)}"]}}
"""


def _admin(gateway: ServerThread, path: str) -> Any:
    response = httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


def _shadow_stats(gateway: ServerThread) -> dict[str, Any]:
    return _admin(gateway, "/admin/aliases/chat/variants/stats")["shadow"]


def _usage(gateway: ServerThread) -> dict[str, dict[str, Any]]:
    rows = _admin(gateway, "/admin/usage?tenant=acme&group_by=variant")["data"]
    assert all(row["model"] == "chat" for row in rows)
    return {row["variant"]: row for row in rows}


def _metric(gateway: ServerThread, name: str, **labels: str) -> float:
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_shadows_are_sent_after_the_answer_recorded_and_ledgered_apart(
    upstream, candidate, start_gateway, store, request
):
    text = _config(upstream[0].url, candidate[0].url)
    if store == "redis":
        text = f"stores: {{redis_url: {request.getfixturevalue('redis_server').url}}}\n" + text
    gateway = start_gateway(text, clock=ManualClock(START))
    before = _metric(
        gateway, "gateway_variant_shadow_requests_total", alias="chat", variant="v2", outcome="ok"
    )
    candidate[1].hold_requests = threading.Event()  # the shadow variant's upstream answers only when told
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        answers = [
            client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": f"question {i}"}]
            )
            for i in range(5)
        ]
        # Every client got its answer from v1 while the shadows wait at the candidate's upstream.
        for i, raw in enumerate(answers):
            assert raw.headers["x-gateway-variant"] == "v1"
            assert (
                raw.parse().model == "model-a"
                and raw.parse().choices[0].message.content == f"Echo: question {i}"
            )
        poll(lambda: len(candidate[1].requests) == 5, "the shadows reached the candidate")
        assert _shadow_stats(gateway).get("v2", {}).get("requests", 0) == 0
        candidate[1].hold_requests.set()
        stats = poll(
            lambda: (s := _shadow_stats(gateway).get("v2")) and s["requests"] == 5 and s, "shadows recorded"
        )

        # A streamed answer is shadowed too (not streamed), with no similarity.
        stream = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "streamed"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: streamed"
        stats = poll(
            lambda: (s := _shadow_stats(gateway)["v2"])["requests"] == 6 and s, "the stream's shadow"
        )

    bodies = [seen.body for seen in candidate[1].requests]
    assert all(
        b["messages"][0] == {"role": "system", "content": "Be brief."} for b in bodies
    )  # v2's own prompt
    assert not any(b.get("stream") for b in bodies)
    assert stats["errors"] == 0 and stats["latency_p50_s"] > 0
    assert stats["similarity_count"] == 5 and stats["similarity_mean"] == 1.0  # the fake echoes the same text
    assert stats["similarity_method"] == "words"  # no semantic cache configured
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0
    # The shadow is priced at v2's own price, ledgered to the tenant under variant shadow:v2.
    expected = (
        stats["prompt_tokens"] * V2_PRICE["input"] + stats["completion_tokens"] * V2_PRICE["output"]
    ) / 1e6
    assert stats["cost_usd"] == pytest.approx(expected)
    usage = poll(
        lambda: (u := _usage(gateway)).get("shadow:v2", {}).get("requests") == 6 and u, "shadow ledgered"
    )
    assert usage["shadow:v2"]["cost_usd"] == pytest.approx(expected)
    assert usage["shadow:v2"]["prompt_tokens"] == stats["prompt_tokens"]
    served = usage["v1"]
    assert served["requests"] == 6
    assert served["cost_usd"] == pytest.approx(
        (served["prompt_tokens"] * V1_PRICE["input"] + served["completion_tokens"] * V1_PRICE["output"]) / 1e6
    )
    keys = {row["key"] for row in _admin(gateway, "/admin/usage?tenant=acme&group_by=key")["data"]}
    assert "shadow" in keys
    assert (
        _metric(gateway, "gateway_variant_shadow_requests_total", alias="chat", variant="v2", outcome="ok")
        == before + 6
    )
    assert _metric(gateway, "gateway_variant_shadow_cost_usd_total", alias="chat", variant="v2") > 0


def test_a_failing_shadow_is_counted_and_the_client_never_sees_it(upstream, candidate, start_gateway):
    text = _config(upstream[0].url, candidate[0].url).replace(
        '"shadow": {"variant": "v2"', '"shadow": {"variant": "v3"'
    )
    gateway = start_gateway(text, clock=ManualClock(START))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        for i in range(4):
            answer = client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": f"q{i}"}]
            )
            assert answer.choices[0].message.content == f"Echo: q{i}"
    stats = poll(
        lambda: (s := _shadow_stats(gateway).get("v3")) and s["requests"] == 4 and s, "shadows recorded"
    )
    assert stats["errors"] == 4 and stats["similarity_count"] == 0


def test_a_share_of_the_requests_is_shadowed(upstream, candidate, start_gateway):
    gateway = start_gateway(_config(upstream[0].url, candidate[0].url, share=0.25), clock=ManualClock(START))
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=20) as client:
        for i in range(200):
            assert (
                client.post(
                    "/v1/chat/completions",
                    json={"model": "chat", "messages": [{"role": "user", "content": f"q{i}"}]},
                ).status_code
                == 200
            )
    poll(lambda: _usage(gateway).get("v1", {}).get("requests") == 200, "answers ledgered")
    shadowed = poll(
        lambda: (
            _shadow_stats(gateway)["v2"]["requests"] == len(candidate[1].requests)
            and len(candidate[1].requests)
        ),
        "shadows recorded",
    )
    assert 20 <= shadowed <= 80, shadowed  # 50 expected; ±30 is about 5 standard deviations (6.1)


def test_word_similarity():
    assert word_similarity("The cat sat", "the CAT sat") == pytest.approx(1.0)
    assert word_similarity("a b", "c d") == 0.0
    assert word_similarity("a b c d", "a b x y") == pytest.approx(0.5)
    assert word_similarity("", "anything") == 0.0


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_variants_own_price_replaces_the_deployments_in_the_ledger(
    upstream, candidate, start_gateway, store, request
):
    text = _config(upstream[0].url, candidate[0].url, share=None)
    if store == "redis":
        text = f"stores: {{redis_url: {request.getfixturevalue('redis_server').url}}}\n" + text
    gateway = start_gateway(text, clock=ManualClock(START))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        for variant in ("v1", "v2", "v2"):
            raw = client.chat.completions.with_raw_response.create(
                model="chat",
                messages=[{"role": "user", "content": "price me"}],
                extra_headers={"x-gateway-variant": variant},
            )
            assert raw.headers["x-gateway-variant"] == variant
    usage = poll(
        lambda: (u := _usage(gateway)).get("v2", {}).get("requests") == 2 and "v1" in u and u, "ledgered"
    )
    for variant, price in (("v1", V1_PRICE), ("v2", V2_PRICE)):  # both deployments have V1_PRICE
        row = usage[variant]
        assert row["prompt_tokens"] > 0 and row["errors"] == 0
        assert row["cost_usd"] == pytest.approx(
            (row["prompt_tokens"] * price["input"] + row["completion_tokens"] * price["output"]) / 1e6
        )
    by_model = _admin(gateway, "/admin/usage?tenant=acme&group_by=model")["data"]
    assert [(r["model"], r["requests"]) for r in by_model] == [
        ("chat", 3)
    ]  # the variant rows are not counted twice
    assert by_model[0]["cost_usd"] == pytest.approx(usage["v1"]["cost_usd"] + usage["v2"]["cost_usd"])


def test_with_the_semantic_cache_similarity_is_by_its_embedder(upstream, candidate, start_gateway):
    cache = json.dumps({"enabled": True, "semantic": {"enabled": True, "timeout_s": 10}})
    gateway = start_gateway(
        f"cache: {cache}\n" + _config(upstream[0].url, candidate[0].url), clock=ManualClock(START)
    )
    questions = ["What is the capital of France?", "How do I bake sourdough bread?"]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        for question in questions:
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": question}])
    stats = poll(
        lambda: (s := _shadow_stats(gateway).get("v2")) and s["similarity_count"] == 2 and s,
        "similarities recorded",
        timeout_s=120,
    )  # the embedding model loads first
    assert stats["similarity_method"] == "embedding"
    assert stats["similarity_mean"] == pytest.approx(1.0, abs=1e-3)  # the fake echoes: the same text


def test_per_variant_ttft_tokens_cost_and_cache_hits_in_metrics(upstream, candidate, start_gateway):
    gateway = start_gateway(
        "cache: {enabled: true}\n" + _config(upstream[0].url, candidate[0].url, share=None),
        clock=ManualClock(START),
    )
    names = (
        "gateway_variant_time_to_first_token_seconds_count",
        "gateway_variant_cost_usd_total",
        "gateway_variant_cache_hits_total",
    )
    before = {name: _metric(gateway, name, alias="chat", variant="v2") for name in names}
    prompt_before = _metric(
        gateway, "gateway_variant_tokens_total", alias="chat", variant="v2", kind="prompt"
    )
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        for _ in range(2):  # the second is answered from the cache
            stream = client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "metrics please"}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-gateway-variant": "v2"},
                temperature=0,
            )
            usage = [chunk.usage for chunk in stream if chunk.usage][-1]
    # counted once the answer's last byte went out, just after the client read it
    after = poll(
        lambda: (
            (a := {name: _metric(gateway, name, alias="chat", variant="v2") for name in names})[
                "gateway_variant_time_to_first_token_seconds_count"
            ]
            == before[names[0]] + 2
            and a
        ),
        "both requests counted",
    )
    assert after["gateway_variant_cache_hits_total"] == before["gateway_variant_cache_hits_total"] + 1
    assert after["gateway_variant_cost_usd_total"] - before[
        "gateway_variant_cost_usd_total"
    ] == pytest.approx(
        (usage.prompt_tokens * V2_PRICE["input"] + usage.completion_tokens * V2_PRICE["output"]) / 1e6
    )
    prompt = _metric(gateway, "gateway_variant_tokens_total", alias="chat", variant="v2", kind="prompt")
    assert prompt - prompt_before >= usage.prompt_tokens


def test_a_request_answered_from_the_cache_is_shadowed_too(upstream, candidate, start_gateway):
    gateway = start_gateway(
        "cache: {enabled: true}\n" + _config(upstream[0].url, candidate[0].url), clock=ManualClock(START)
    )
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        cached = [
            client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "same question"}], temperature=0
            ).headers["x-cache"]
            for _ in range(2)
        ]
    assert cached == ["miss", "hit-exact"]
    stats = poll(
        lambda: (s := _shadow_stats(gateway).get("v2")) and s["requests"] == 2 and s, "both shadowed"
    )
    assert stats["similarity_count"] == 2 and len(candidate[1].requests) == 2
