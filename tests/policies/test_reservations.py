"""Reservations that hold whatever the request omits: token limits and budgets against prompts larger than
the bucket, answers that would run long, several completions, and prompts the estimate undercounts."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.conftest import KEY
from tests.gateway.test_server import start_serve_with
from tests.policies.conftest import ADMIN_KEY, chat, policy_config, sdk
from tests.policies.test_processes import stop_processes

NANO = 1_000_000_000


def _spent(url: str, count: int, timeout: float = 15) -> list[dict]:
    """acme's ledger records once ``count`` of them are settled."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(
            url + "/admin/usage",
            params={"tenant": "acme", "group_by": "request"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        records = [r for r in answer.json()["data"] if r.get("state", "settled") == "settled"]
        if len(records) >= count:
            return records
        assert time.monotonic() < deadline, f"{len(records)} of {count} records settled"
        time.sleep(0.1)


def test_a_prompt_larger_than_the_token_bucket_is_refused_without_max_tokens(policy_gateway, upstream):
    """tpm 2000 and a ~3,000-token prompt with no max_tokens, 10 times: every one refused as too large,
    none reaching the upstream (the token charge is no longer capped at the bucket's size)."""
    server = policy_gateway(acme="    limits: {tpm: 2000}\n    max_wait_s: 5")
    prompt = "lorem ipsum dolor sit amet " * 450  # ~3,000 tokens by any count
    upstream[1].requests.clear()
    with sdk(server) as client:
        for _ in range(10):
            with pytest.raises(openai.RateLimitError) as refused:
                chat(client, prompt)
            assert refused.value.type == "tokens"
            assert (
                "Request too large for tenant (acme) on tokens per min (TPM): Limit 2000"
                in refused.value.message
            )
    assert upstream[1].requests == []


def test_without_max_tokens_the_upstream_is_held_to_what_the_bucket_reserved(policy_gateway, upstream):
    server = policy_gateway(acme="    limits: {tpm: 2000}\n    max_wait_s: 0")
    upstream[1].requests.clear()
    with sdk(server) as client:
        assert chat(client, "a short question").parse().choices
        with pytest.raises(openai.RateLimitError):  # the first reserved the whole bucket: prompt + the rest
            chat(client, "a short question")
    sent = upstream[1].requests[0].body
    assert "max_tokens" not in sent and 1900 < sent["max_completion_tokens"] < 2000


def test_best_of_and_n_reserve_every_completion_they_generate(policy_gateway, upstream):
    server = policy_gateway(acme="    limits: {tpm: 1000}\n    max_wait_s: 0")
    headers = {"Authorization": f"Bearer {KEY}"}
    upstream[1].requests.clear()
    response = httpx.post(
        server.url + "/v1/completions",
        headers=headers,
        timeout=10,
        json={"model": "chat", "prompt": "x", "max_tokens": 100, "best_of": 20},
    )
    assert (
        response.status_code == 429 and "Requested 2" in response.json()["error"]["message"]
    )  # 20 x 100 + prompt
    response = httpx.post(
        server.url + "/v1/chat/completions",
        headers=headers,
        timeout=10,
        json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100, "n": 20},
    )
    assert response.status_code == 429 and response.json()["error"]["type"] == "tokens"
    assert upstream[1].requests == []


def test_answers_that_would_run_long_cannot_pass_the_budget(upstream, start_gateway, stores_yaml):
    """Budget $0.30; 50 concurrent chats without max_tokens to an upstream that would write 16,000
    completion tokens each ($0.0384 apiece). The reserved cap (default_max_tokens, 4,096: $0.0098) goes
    upstream, so no answer is longer than its reservation and the budget holds: 30 fit, the rest are
    refused."""
    text = policy_config(
        upstream[0].url,
        acme="    budget: {daily_usd: 0.3}",
        stores=stores_yaml,
        price="{input: 0.0, output: 2.4}",
    ).replace("model: fake-model", "model: long-answer")
    server = start_gateway(text)
    upstream[1].requests.clear()

    async def one(client: openai.AsyncOpenAI) -> str:
        try:
            await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "write"}]
            )
            return "ok"
        except openai.RateLimitError as exc:
            return exc.code or "429"

    async def load() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30
        ) as client:
            return await asyncio.gather(*(one(client) for _ in range(50)))

    outcomes = asyncio.run(load())
    admitted = outcomes.count("ok")
    assert set(outcomes) == {"ok", "insufficient_quota"} and 25 <= admitted <= 30, outcomes
    assert all(r.body["max_completion_tokens"] == 4096 for r in upstream[1].requests)
    spent = sum(round(r["cost_usd"] * NANO) for r in _spent(server.url, admitted))
    assert spent <= 0.3 * NANO, spent / NANO


def test_several_processes_keep_a_budget_against_an_undercounted_prompt(tmp_path, upstream, redis_server):
    """100 concurrent requests across 3 processes on one Redis; the upstream counts each prompt about 30
    tokens above the gateway's estimate (4 characters a token: no tokenizer for this model). The margin an
    estimated prompt is reserved with (25%, at least 16 tokens) covers it: the spend stays within the budget."""
    text = policy_config(
        upstream[0].url,
        acme="    budget: {daily_usd: 10}",
        stores=f"  redis_url: {redis_server.url}",
        price="{input: 1000.0, output: 0.0}",
    )
    config = tmp_path / "config.yaml"
    config.write_text(text.replace("model: fake-model", "model: more-prompt"))
    # one after the other: four starting together on a loaded 2-core machine can take more than 30 s each
    started = [start_serve_with(config, {}, stdout=tmp_path / f"gateway{i}.log") for i in range(3)]
    processes, urls = [p for p, _ in started], [u for _, u in started]
    prompt = "word " * 160  # 800 characters: estimated 206 tokens with the framing, reserved 258; billed ~239

    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        try:
            await client.chat.completions.create(
                model="chat", max_tokens=64, messages=[{"role": "user", "content": prompt + str(i)}]
            )
            return "ok"
        except openai.RateLimitError as exc:
            return exc.code or "429"

    async def load() -> list[str]:
        clients = [
            openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30) for url in urls
        ]
        try:
            return await asyncio.gather(*(one(clients[i % len(clients)], i) for i in range(100)))
        finally:
            for client in clients:
                await client.close()

    try:
        upstream[1].requests.clear()
        outcomes = asyncio.run(load())
        admitted = outcomes.count("ok")
        assert set(outcomes) <= {"ok", "insufficient_quota"}, outcomes
        records = _spent(urls[0], admitted)
        spent = sum(round(r["cost_usd"] * NANO) for r in records)
        billed = [r["prompt_tokens"] for r in records]
        assert min(billed) >= 236  # the upstream did count more than the estimate (206)
        assert spent <= 10 * NANO, spent / NANO
        assert admitted >= 36, admitted  # and the margin costs little: 10 / 0.258 = 38 reservations fit
    finally:
        stop_processes(processes)
