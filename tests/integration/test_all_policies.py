"""Every policy at once, as a production config turns them on: limits, budget and ledger in Redis, the exact
cache, retries and a fallback chain, OpenAI and Anthropic clients. Each part has its own suite; this one checks
that they compose: a cache hit is not billed, a retried request is billed once, both APIs reach the ledger."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.auth import hash_key, new_key
from policies.cost import PriceTable
from policies.models import model_info
from tests.conftest import KEY, UPSTREAM_KEY
from tests.harness import ServerThread

ADMIN_KEY = new_key()


def _config(upstream: str, redis_url: str) -> str:
    return f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
stores:
  redis_url: {redis_url}
cache:
  enabled: true
models:
  - name: chat                      # its only deployment fails; the fallback answers
    deployments:
      - provider: openai-compatible
        name: broken
        model: error-503
        api_base: {upstream}/v1
        api_key: {UPSTREAM_KEY}
    fallbacks: [{{alias: backup, on: [any]}}]
  - name: backup
    deployments:
      - provider: openai-compatible
        name: healthy
        model: gpt-4o-mini
        api_base: {upstream}/v1
        api_key: {UPSTREAM_KEY}
tenants:
  - name: acme
    keys: ["{hash_key(KEY)}"]
    limits: {{rpm: 100, tpm: 100000}}
    budget: {{daily_usd: 5}}
"""


@pytest.fixture
def gateway(upstream, redis_server, start_gateway: Callable[[str], ServerThread]) -> ServerThread:
    return start_gateway(_config(upstream[0].url, redis_server.url))


def _usage(gateway: ServerThread, group_by: str) -> list[dict]:
    response = httpx.get(
        gateway.url + "/admin/usage",
        params={"tenant": "acme", "group_by": group_by},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _settled(gateway: ServerThread, count: int) -> list[dict]:
    deadline = time.monotonic() + 10  # settlement runs just after each response
    while len(records := _usage(gateway, "request")) < count or any(r.get("status") is None for r in records):
        assert time.monotonic() < deadline, records
        time.sleep(0.05)
    return records


def test_policies_compose_across_both_apis(gateway: ServerThread, upstream) -> None:
    state = upstream[1]
    ask: dict[str, Any] = {
        "model": "chat",
        "temperature": 0,
        "messages": [{"role": "user", "content": "what is two plus two"}],
    }
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=30) as client:
        first = client.chat.completions.with_raw_response.create(**ask)
        # answered by the fallback after the broken deployment's 503, with OpenAI's rate-limit headers
        assert first.headers["x-gateway-deployment"] == "healthy"
        assert first.headers["x-cache"] == "miss"
        assert first.headers["x-ratelimit-limit-requests"] == "100"
        assert int(first.headers["x-ratelimit-remaining-requests"]) < 100
        completion = first.parse()
        assert completion.choices[0].message.content == "Echo: what is two plus two"

        again = client.chat.completions.with_raw_response.create(**ask)
        assert again.headers["x-cache"] == "hit-exact"
        assert again.parse().choices[0].message.content == completion.choices[0].message.content

        stream = client.chat.completions.create(
            **{**ask, "messages": [{"role": "user", "content": "count to three"}]}, stream=True
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: count to three"
        )

    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0, timeout=30) as claude:
        message = claude.messages.create(
            model="chat", max_tokens=50, messages=[{"role": "user", "content": "hello from claude"}]
        )
        assert message.content[0].text == "Echo: hello from claude"  # type: ignore[union-attr]

    # upstream calls: the three answered requests failed on `broken` (retried there), then `healthy` answered;
    # the cache hit called nothing
    models = [seen.body["model"] for seen in state.requests]
    assert models.count("gpt-4o-mini") == 3 and set(models) == {"error-503", "gpt-4o-mini"}

    records = _settled(gateway, 4)
    assert len(records) == 4 and all(r["status"] == 200 for r in records)
    hits = [r for r in records if r.get("cache_hit")]
    assert len(hits) == 1 and hits[0]["cost_usd"] == 0
    info = model_info("gpt-4o-mini")
    assert info is not None
    price = PriceTable.of(info)
    billed = [r for r in records if not r.get("cache_hit")]
    for record in billed:  # billed once, at the deployment that answered, from the upstream's usage
        assert record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
        assert record["cost_usd"] == pytest.approx(
            price.nano(record["prompt_tokens"], record["completion_tokens"]) / 1e9, abs=1e-9
        )
    by_model = _usage(gateway, "model")
    assert sum(row["requests"] for row in by_model) == 4
    assert sum(row["cache_hits"] for row in by_model) == 1
    assert sum(row["cost_usd"] for row in by_model) == pytest.approx(
        sum(r["cost_usd"] for r in billed), abs=1e-9
    )
