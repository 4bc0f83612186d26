"""Budgets, cost and the ledger end to end, and the usage API, on both stores."""

from __future__ import annotations

import csv
import io

import httpx
import openai
import pytest

from policies.clock import ManualClock, utc_day
from policies.models import model_info
from tests.policies.conftest import ADMIN_KEY, KEY, OTHER_KEY, SECOND_KEY, chat, key_id, sdk, settled, usage
from tests.wait import wait_for


def price(prompt: int, completion: int, input_usd: float = 1.0, output_usd: float = 2.0) -> float:
    return (prompt * input_usd + completion * output_usd) / 1e6


def test_each_request_is_priced_from_its_upstream_usage_and_ledgered_once(policy_gateway):
    server = policy_gateway()
    expected = 0.0
    with sdk(server) as client:
        for i in range(5):
            answer = chat(client, f"message number {i}").parse()
            assert answer.usage is not None
            expected += price(answer.usage.prompt_tokens, answer.usage.completion_tokens)
        stream = client.chat.completions.create(
            model="chat", stream=True, messages=[{"role": "user", "content": "a b c"}]
        )
        chunks = list(stream)
        assert all(c.usage is None for c in chunks)  # the client did not ask for usage: none shown
    settled(server)
    records = usage(server, tenant="acme", group_by="request").json()["data"]
    assert len(records) == 6
    assert len({r["request_id"] for r in records}) == 6
    streamed = records[-1]  # in time order: the stream came last
    assert streamed["completion_tokens"] == 4  # "Echo: a b c": the stream's usage was asked upstream
    expected += price(streamed["prompt_tokens"], streamed["completion_tokens"])
    assert round(sum(r["cost_usd"] for r in records), 9) == round(expected, 9)
    assert {r["deployment"] for r in records} == {"fake-chat"}
    assert all(r["state"] == "settled" for r in records)
    by_model = usage(server, tenant="acme", group_by="model").json()["data"]
    assert by_model == [
        {
            "tenant": "acme",
            "model": "chat",
            "requests": 6,
            "prompt_tokens": sum(r["prompt_tokens"] for r in records),
            "completion_tokens": sum(r["completion_tokens"] for r in records),
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "cache_hits": 0,
            "errors": 0,
            "estimated": 0,
            "cost_usd": pytest.approx(expected, abs=1e-9),
        }
    ]


def test_a_failed_upstream_call_costs_nothing_and_is_still_recorded(policy_gateway):
    server = policy_gateway()
    with sdk(server) as client, pytest.raises(openai.InternalServerError):
        chat(client, model="broken")
    settled(server)
    [record] = usage(server, tenant="acme", group_by="request").json()["data"]
    assert record["status"] == 500 and record["cost_usd"] == 0 and record["alias"] == "broken"


def test_usage_api_groups_by_key_and_day_and_answers_csv(policy_gateway):
    clock = ManualClock()
    server = policy_gateway(clock=clock)
    with sdk(server) as first, sdk(server, SECOND_KEY) as second:
        chat(first)
        chat(first)
        chat(second)
    settled(server)
    rows = usage(server, tenant="acme", group_by="key").json()["data"]
    assert {r["key"]: r["requests"] for r in rows} == {key_id(KEY): 2, key_id(SECOND_KEY): 1}
    [day] = usage(server, tenant="acme", group_by="day").json()["data"]
    assert day["day"] == utc_day(clock.time()) and day["requests"] == 3
    text = usage(server, tenant="acme", group_by="model", format="csv")
    assert text.headers["Content-Type"].startswith("text/csv")
    [row] = list(csv.DictReader(io.StringIO(text.text)))
    assert row["model"] == "chat" and row["requests"] == "3"


def test_a_tenant_key_reads_only_its_own_usage(policy_gateway):
    server = policy_gateway()
    with sdk(server) as client:
        chat(client)
    with sdk(server, OTHER_KEY) as other:
        chat(other)
    settled(server)
    own = usage(server, KEY).json()["data"]
    assert [r["tenant"] for r in own] == ["acme"]
    refused = usage(server, KEY, tenant="globex")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    everyone = usage(server, ADMIN_KEY).json()["data"]
    assert sorted(r["tenant"] for r in everyone) == ["acme", "globex"]
    assert usage(server, ADMIN_KEY, group_by="colour").status_code == 400
    no_such_day = {"from": "2026-13-01"}  # date-ok: no 13th month, refused whatever today is
    assert usage(server, ADMIN_KEY, **no_such_day).json()["error"]["param"] == "from"
    assert httpx.get(server.url + "/admin/usage").status_code == 401


def test_budget_hard_stop_answers_insufficient_quota(policy_gateway):
    # about 0.12 USD per request: the prompt is priced at 10,000 USD per million tokens
    server = policy_gateway(
        acme="    budget: {daily_usd: 1.0, soft_ratio: 0.5}", price="{input: 10000.0, output: 0.0}"
    )
    admitted = 0
    with sdk(server) as client, pytest.raises(openai.RateLimitError) as refused:
        for _ in range(100):
            chat(client, max_tokens=1)
            admitted += 1
            settled(server)
    error = refused.value
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert "tenant daily budget of $1.00" in error.message
    assert 5 <= admitted <= 9
    settled(server)
    [row] = usage(server, tenant="acme").json()["data"]
    assert 0.5 < row["cost_usd"] <= 1.0  # the next request's estimate counts: never past the budget
    metrics = httpx.get(server.url + "/metrics").text
    assert 'gateway_budget_soft_threshold_total{budget="tenant daily",tenant="acme"}' in metrics
    with sdk(server, OTHER_KEY) as other:  # other tenants are not affected
        assert chat(other).parse().choices


def test_key_budget_stops_one_key_only(policy_gateway):
    server = policy_gateway(
        acme=f"""    per_key:
      {key_id(SECOND_KEY)}: {{budget: {{monthly_usd: 0.00001}}}}"""
    )
    with sdk(server, SECOND_KEY) as second, pytest.raises(openai.RateLimitError, match="key monthly budget"):
        for _ in range(50):
            chat(second, "a " * 100, max_tokens=1)
            settled(server)
    with sdk(server) as first:
        assert chat(first).parse().choices


def test_catalog_prices_the_well_known_models():
    gpt = model_info("gpt-4o-mini-2024-07-18")  # date-ok: a model name
    assert gpt is not None and gpt.input == 0.15 and gpt.output == 0.60


def test_stream_usage_off_counts_the_streamed_text(upstream, start_gateway, stores_yaml):
    from tests.policies.conftest import policy_config

    text = policy_config(upstream[0].url, stores=stores_yaml).replace(
        "        name: fake-chat\n", "        name: fake-chat\n        stream_usage: false\n"
    )
    server = start_gateway(text)
    with sdk(server) as client:
        chunks = list(
            client.chat.completions.create(
                model="chat", stream=True, messages=[{"role": "user", "content": "a b c"}]
            )
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: a b c"
    assert "stream_options" not in upstream[1].requests[-1].body
    settled(server)
    [record] = usage(server, tenant="acme", group_by="request").json()["data"]
    assert record["completion_tokens"] == 3  # "Echo: a b c": 11 characters, about 4 a token
    assert record["state"] == "settled" and record["prompt_tokens"] > 0
    assert record["cost_usd"] == pytest.approx(price(record["prompt_tokens"], 3), abs=1e-12)


def test_a_client_that_leaves_mid_stream_is_charged_the_estimate(policy_gateway, upstream):
    server = policy_gateway()
    with sdk(server) as client:
        stream = client.chat.completions.create(
            model="slow", stream=True, max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )
        next(iter(stream))
        stream.close()

    def recorded() -> list:  # the gateway notices the client left at its next write: then it settles
        settled(server)
        return usage(server, tenant="acme", group_by="request").json()["data"]

    [record] = wait_for(recorded, what="the abandoned stream's record")
    assert record["state"] == "estimated" and record["status"] == 499
    assert record["completion_tokens"] == 50  # the reservation: the upstream may bill what it generated
