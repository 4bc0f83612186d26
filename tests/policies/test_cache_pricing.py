"""Prompt caching priced right, end to end: each upstream's cache reads and writes (OpenAI ``cached_tokens``,
Anthropic ``cache_read_input_tokens`` / ``cache_creation_input_tokens``, Gemini ``cachedContentTokenCount``,
Bedrock ``cacheReadInputTokens`` / ``cacheWriteInputTokens``) reach the ledger as their own kinds, each priced
at the deployment's rate for it, streamed and whole, through chat completions, ``/v1/messages`` and
``/v1/responses``; the usage API shows the kinds apart."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from gateway.auth import hash_key
from tests.conftest import KEY, UPSTREAM_KEY
from tests.fakes import anthropic_upstream, bedrock_upstream, gemini_upstream, openai_upstream
from tests.fakes.providers import BEDROCK_MODEL, deployment, fakes
from tests.policies.conftest import ADMIN_KEY, settled, usage

__all__ = ["fakes"]

# USD per million: input, cache read, cache write, output (distinct, so a token of the wrong kind shows)
PRICE = {"input": 1.0, "cached_input": 0.1, "cache_write_input": 1.25, "output": 2.0}
# (cache reads, cache writes) each alias's upstream reports
CACHE = {
    "openai": (openai_upstream.CACHED, 0),
    "native": (openai_upstream.CACHED, 0),
    "anthropic": (anthropic_upstream.CACHE_READ, anthropic_upstream.CACHE_WRITE),
    "gemini": (gemini_upstream.CACHED, 0),
    "bedrock": (bedrock_upstream.CACHE_READ, bedrock_upstream.CACHE_WRITE),
}


@pytest.fixture
def gateway(fakes, upstream, start_gateway, stores_yaml, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", bedrock_upstream.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bedrock_upstream.SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", bedrock_upstream.REGION)
    models = {
        "anthropic": "claude-3-5-sonnet-20241022",
        "gemini": "gemini-2.0-flash",
        "bedrock": BEDROCK_MODEL,
    }
    price = json.dumps(PRICE)
    aliases = [
        f"""  - name: openai
    deployments:
      - {{provider: openai-compatible, model: fake-model, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY},
         price: {price}}}
  - name: native
    deployments:
      - {{provider: openai, model: gpt-fake, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY},
         price: {price}}}"""
    ]
    for provider, model in models.items():
        aliases.append(f"""  - name: {provider}
    deployments:
      - {deployment(provider, fakes, model)}
        price: {price}""")
    return start_gateway(f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
stores:
  sweep_interval_s: 1
{stores_yaml}
models:
{chr(10).join(aliases)}
tenants:
  - name: acme
    keys: ["{hash_key(KEY)}"]
""")


def nusd(prompt: int, completion: int, read: int, written: int) -> float:
    micro = (
        (prompt - read - written) * PRICE["input"]
        + read * PRICE["cached_input"]
        + written * PRICE["cache_write_input"]
        + completion * PRICE["output"]
    )
    return micro / 1e6


@pytest.mark.parametrize("store_kind", ["memory", "redis"], indirect=True)
def test_cache_reads_and_writes_are_ledgered_apart_and_priced_at_their_rates(gateway):
    sent: list[tuple[str, str]] = []  # (alias, how) of each request, in order
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client,
        anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0, timeout=20) as claude,
    ):
        for alias in ("openai", "anthropic", "gemini", "bedrock"):
            extra: dict[str, Any] = {"prompt_cache_key": "repo-1"} if alias == "openai" else {}
            answer = client.chat.completions.create(
                model=alias, messages=[{"role": "user", "content": "hi there"}], **extra
            )
            assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
            assert answer.usage.prompt_tokens_details.cached_tokens == CACHE[alias][0]
            chunks = list(
                client.chat.completions.create(
                    model=alias,
                    messages=[{"role": "user", "content": "hi there"}],
                    stream=True,
                    stream_options={"include_usage": True},
                    **extra,
                )
            )
            assert chunks[-1].usage is not None
            sent += [(alias, "chat"), (alias, "chat-stream")]
        for alias in ("anthropic", "gemini"):  # native, and translated to a chat-shaped upstream
            message = claude.messages.create(
                model=alias, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
            assert message.usage.cache_read_input_tokens == CACHE[alias][0]
            assert message.usage.cache_creation_input_tokens == CACHE[alias][1]
            with claude.messages.stream(
                model=alias, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            ) as s:
                final = s.get_final_message()
            assert final.usage.cache_read_input_tokens == CACHE[alias][0]
            sent += [(alias, "messages"), (alias, "messages-stream")]
        for alias in ("native", "anthropic"):  # passed through to OpenAI, and translated
            response = client.responses.create(model=alias, input="hi there", prompt_cache_key="repo-1")
            assert response.usage is not None
            assert response.usage.input_tokens_details.cached_tokens == CACHE[alias][0]
            with client.responses.stream(model=alias, input="hi there", prompt_cache_key="repo-1") as s:
                streamed = s.get_final_response()
            assert (
                streamed.usage is not None
                and streamed.usage.input_tokens_details.cached_tokens == CACHE[alias][0]
            )
            sent += [(alias, "responses"), (alias, "responses-stream")]
    settled(gateway)

    records = usage(gateway, tenant="acme", group_by="request").json()["data"]
    assert len(records) == len(sent) and all(r["status"] == 200 and r["state"] == "settled" for r in records)
    for record in records:
        read, written = CACHE[record["alias"]]
        assert (record["cached_tokens"], record["cache_write_tokens"]) == (read, written), record
        assert record["prompt_tokens"] > read + written and record["completion_tokens"] > 0
        expected = nusd(record["prompt_tokens"], record["completion_tokens"], read, written)
        assert record["cost_usd"] == pytest.approx(expected, abs=1e-9), record

    by_model = {row["model"]: row for row in usage(gateway, tenant="acme", group_by="model").json()["data"]}
    for alias, (read, written) in CACHE.items():
        count = sum(1 for a, _ in sent if a == alias)
        row = by_model[alias]
        assert row["requests"] == count
        assert (row["cached_tokens"], row["cache_write_tokens"]) == (read * count, written * count)
        cost = sum(r["cost_usd"] for r in records if r["alias"] == alias)
        assert row["cost_usd"] == pytest.approx(cost, abs=1e-9)
    csv = usage(gateway, tenant="acme", group_by="model", format="csv").text
    assert "cached_tokens,cache_write_tokens,reasoning_tokens" in csv.splitlines()[0]
