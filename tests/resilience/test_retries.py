"""Retries: which errors, where the next attempt goes, how long it waits, the budget, the deadline."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from policies.resilience_config import RetryConfig
from policies.retry import RetryBudget, backoff
from tests.conftest import KEY, log_line
from tests.fakes.chaos_upstream import Fault
from tests.resilience.conftest import alias, chat, config, dep


def test_a_failed_attempt_is_retried_on_the_other_deployment_at_once(chaos, start_gateway):
    url = chaos[0].url
    gateway = start_gateway(
        config(
            alias("chat", dep(url, "bad", weight=100), dep(url, "good", weight=0.01)),
            resilience={"retry": {"backoff_base_s": 1.0}},
        )
    )
    chaos[1].faults["bad"] = Fault("status", status=502)
    for _ in range(3):
        started = time.monotonic()
        response = chat(gateway, "chat")
        assert response.status_code == 200
        assert response.headers["x-gateway-deployment"] == "openai-compatible/good"
        assert time.monotonic() - started < 0.9  # another deployment: no backoff
    assert chaos[1].requests["bad"] >= 1
    line = log_line(response.headers["x-request-id"])
    assert line["attempts"] in (
        ["openai-compatible/bad:502", "openai-compatible/good:200"],
        ["openai-compatible/good:200"],
    )


@pytest.mark.parametrize("header, wait", [({"retry_after": "0.6"}, 0.6), ({"retry_after_ms": "400"}, 0.4)])
def test_retry_after_is_honoured_on_the_same_deployment(chaos, start_gateway, header, wait):
    gateway = start_gateway(config(alias("chat", dep(chaos[0].url, "m"))))
    chaos[1].faults["m"] = Fault("status", status=429, times=1, **header)
    started = time.monotonic()
    response = chat(gateway, "chat")
    assert response.status_code == 200
    assert time.monotonic() - started >= wait
    assert log_line(response.headers["x-request-id"])["attempts"] == [
        "openai-compatible/m:429",
        "openai-compatible/m:200",
    ]


def test_retry_after_beyond_the_cap_is_not_waited_for(chaos, start_gateway):
    gateway = start_gateway(
        config(alias("chat", dep(chaos[0].url, "m")), resilience={"retry": {"retry_after_max_s": 2}})
    )
    chaos[1].faults["m"] = Fault("status", status=429, retry_after="30")
    started = time.monotonic()
    response = chat(gateway, "chat")
    assert time.monotonic() - started < 1.5
    assert response.status_code == 429 and response.headers["retry-after"] == "30"
    assert chaos[1].requests["m"] == 1


@pytest.mark.parametrize("status", [400, 404, 413, 422])  # an upstream 401 is the gateway's key: a 502
def test_client_errors_are_not_retried(chaos, start_gateway, status):
    gateway = start_gateway(config(alias("chat", dep(chaos[0].url, "m"), dep(chaos[0].url, "n"))))
    chaos[1].faults["*"] = Fault("status", status=status)
    assert chat(gateway, "chat").status_code == status
    assert sum(chaos[1].requests.values()) == 1


def test_retried_statuses_are_configurable(chaos, start_gateway):
    gateway = start_gateway(config(alias("chat", dep(chaos[0].url, "m"), retry={"on_status": [503]})))
    chaos[1].faults["m"] = Fault("status", status=500, times=1)
    assert chat(gateway, "chat").status_code == 500
    chaos[1].faults["m"] = Fault("status", status=503, times=1)
    assert chat(gateway, "chat").status_code == 200
    chaos[1].faults["m"] = Fault("reset", times=1)  # connection errors always are
    assert chat(gateway, "chat").status_code == 200
    assert chaos[1].requests["m"] == 5


def test_backoff_is_full_jitter_capped():
    config = RetryConfig(backoff_base_s=0.1, backoff_max_s=0.5)
    samples = [backoff(3, config) for _ in range(2000)]
    assert 0 <= min(samples) < 0.05 and 0.35 < max(samples) <= 0.4  # uniform in [0, 0.1 * 2**2]
    assert max(backoff(10, config) for _ in range(2000)) <= 0.5


def test_retry_budget_counts_requests_and_retries_over_its_window():
    now = [0.0]
    budget = RetryBudget(
        RetryConfig(budget_ratio=0.2, budget_min_per_s=0, budget_window_s=10), clock=lambda: now[0]
    )
    for _ in range(50):
        budget.request()
    assert sum(budget.try_retry() for _ in range(30)) == 10
    now[0] = 11.0  # the window has moved on: nothing left of those requests
    assert not budget.try_retry()
    budget.request()
    budget.request()
    budget.request()
    budget.request()
    budget.request()
    assert budget.try_retry() and not budget.try_retry()


async def test_retry_budget_holds_against_an_upstream_that_always_fails(chaos, start_gateway):
    gateway = start_gateway(
        config(
            alias(
                "chat",
                dep(chaos[0].url, "m"),
                retry={"attempts": 3, "budget_ratio": 0.2, "budget_min_per_s": 0, "backoff_base_s": 0},
            ),
            resilience={"breaker": {"enabled": False}},
        )
    )
    chaos[1].faults["m"] = Fault("status", status=500)
    requests = 200
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:

        async def one() -> int:
            async with session.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
            ) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*[one() for _ in range(requests)])
        async with session.get(gateway.url + "/metrics") as r:
            metrics = await r.text()
    assert set(statuses) == {500}
    upstream = chaos[1].requests["m"]
    assert requests < upstream <= requests * 1.2 + 1  # without the budget: 600
    assert 'gateway_retry_budget_exhausted_total{alias="chat"}' in metrics


def test_the_deadline_header_bounds_the_whole_request(chaos, start_gateway):
    gateway = start_gateway(
        config(alias("chat", dep(chaos[0].url, "m")), resilience={"deadline_s": 30, "max_deadline_s": 2})
    )
    chaos[1].faults["m"] = Fault("hang")
    started = time.monotonic()
    response = chat(gateway, "chat", headers={"x-gateway-timeout": "0.5"})
    assert 0.45 < time.monotonic() - started < 1.5
    assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
    started = time.monotonic()
    response = chat(gateway, "chat", headers={"x-gateway-timeout": "100"})  # capped by max_deadline_s
    assert 1.9 < time.monotonic() - started < 3.5
    assert response.status_code == 504
    response = chat(gateway, "chat", headers={"x-gateway-timeout": "soon"})
    assert response.status_code == 400 and "x-gateway-timeout" in response.json()["error"]["message"]


def test_a_slow_first_token_moves_the_stream_to_another_deployment(chaos, start_gateway):
    url = chaos[0].url
    gateway = start_gateway(
        config(
            alias(
                "chat", dep(url, "slow", weight=100, timeouts={"ttft_s": 0.3}), dep(url, "fast", weight=0.01)
            )
        )
    )
    chaos[1].faults["slow"] = Fault("slow_first_token", delay_s=3)
    for _ in range(3):
        started = time.monotonic()
        response = chat(gateway, "chat", "a b", stream=True)
        assert response.status_code == 200 and "data: [DONE]" in response.text
        assert response.headers["x-gateway-deployment"] == "openai-compatible/fast"
        assert time.monotonic() - started < 1.5
    assert chaos[1].requests["slow"] >= 1


@pytest.mark.parametrize("read_s", [600, 0.5])
def test_the_deadline_ends_a_stream_that_runs_past_it_with_an_error_event(upstream, start_gateway, read_s):
    from tests.conftest import UPSTREAM_KEY

    # the plain fake's slow-stream: ten chunks 0.2 s apart
    gateway = start_gateway(
        config(
            alias(
                "chat", dep(upstream[0].url, "slow-stream", api_key=UPSTREAM_KEY, timeouts={"read_s": read_s})
            )
        )
    )
    started = time.monotonic()
    response = chat(gateway, "chat", stream=True, headers={"x-gateway-timeout": "0.9"})
    assert 0.85 < time.monotonic() - started < 1.6
    events = [e for e in response.text.split("\n\n") if e.strip()]
    assert '"content":"w0"' in response.text  # what came before the deadline got through
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "deadline_exceeded"
