"""Routing strategies, and fallbacks by error class (context window, rate limit, content policy, timeout)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import aiohttp
import httpx
import pytest

from tests.conftest import KEY
from tests.fakes.chaos_upstream import Fault
from tests.resilience.conftest import admin_deployments, alias, chat, config, dep


def _served(gateway, model="chat", n=1, **kwargs) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    with httpx.Client() as client:
        for _ in range(n):
            response = chat(gateway, model, client=client, **kwargs)
            assert response.status_code == 200, response.text
            seen[response.headers["x-gateway-deployment"].split("/")[-1]] += 1
    return seen


async def _concurrently(gateway, n: int, workers: int) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:

        async def worker() -> None:
            for _ in range(n // workers):
                async with session.post(
                    gateway.url + "/v1/chat/completions",
                    json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
                ) as r:
                    assert r.status == 200
                    seen[r.headers["x-gateway-deployment"].split("/")[-1]] += 1

        await asyncio.gather(*[worker() for _ in range(workers)])
    return seen


def test_weighted_random_follows_the_weights(chaos, start_gateway):
    url = chaos[0].url
    gateway = start_gateway(config(alias("chat", dep(url, "a", weight=3), dep(url, "b", weight=1))))
    seen = _served(gateway, n=200)
    assert 2.0 < seen["a"] / seen["b"] < 4.5


async def test_least_outstanding_avoids_the_busy_deployment(chaos, start_gateway):
    url = chaos[0].url
    gateway = start_gateway(
        config(alias("chat", dep(url, "slow"), dep(url, "fast"), routing={"strategy": "least_outstanding"}))
    )
    chaos[1].faults["slow"] = Fault("slow_first_token", delay_s=0.5)
    seen = await _concurrently(gateway, 40, workers=4)
    # weighted random would send about half (20) to the slow one; a busy CI machine slows the fast answers
    # too, which makes more ties between the two counts, hence the margin
    assert seen["slow"] <= 12 and seen["fast"] >= 28, seen


def test_lowest_latency_prefers_the_fastest_once_measured(chaos, start_gateway):
    url = chaos[0].url
    gateway = start_gateway(
        config(alias("chat", dep(url, "slow"), dep(url, "fast"), routing={"strategy": "lowest_latency"}))
    )
    chaos[1].faults["slow"] = Fault("slow_first_token", delay_s=0.2)
    assert _served(gateway, n=2) == {"slow": 1, "fast": 1}  # each measured once first
    assert _served(gateway, n=10) == {"fast": 10}
    latencies = {d["deployment"]: d["latency_ewma_ms"] for d in admin_deployments(gateway).values()}
    assert latencies["openai-compatible/slow"] >= 200 > latencies["openai-compatible/fast"]


def test_lowest_cost_uses_the_catalog_price_and_fails_over_to_the_dearer(chaos, start_gateway):
    url = chaos[0].url
    gateway = start_gateway(
        config(
            alias("chat", dep(url, "gpt-4o"), dep(url, "gpt-4o-mini"), routing={"strategy": "lowest_cost"})
        )
    )
    assert _served(gateway, n=10) == {"gpt-4o-mini": 10}
    chaos[1].faults["gpt-4o-mini"] = Fault("status", status=503)
    assert _served(gateway, n=2) == {"gpt-4o": 2}


def test_sticky_sessions_stay_on_one_deployment_and_move_only_when_it_fails(chaos, start_gateway):
    url = chaos[0].url
    gateway = start_gateway(
        config(
            alias("chat", dep(url, "a"), dep(url, "b"), dep(url, "c"), routing={"strategy": "sticky"}),
            resilience={"breaker": {"failures": 1, "cooldown_s": 60}},
        )
    )
    home = {}
    for i in range(12):
        seen = _served(gateway, n=3, headers={"x-session-id": f"s{i}"})
        assert len(seen) == 1, seen  # every request of a session on the same deployment
        home[f"s{i}"] = next(iter(seen))
    assert len(set(home.values())) >= 2  # sessions spread over the deployments
    # the body's `user` is the session when there is no header
    assert len(_served(gateway, n=4, user="alice")) == 1

    down = home["s0"]
    chaos[1].faults[down] = Fault("status", status=500)
    moved = _served(gateway, n=3, headers={"x-session-id": "s0"})
    assert len(moved) == 1 and down not in moved
    for session, deployment in home.items():
        if deployment != down:  # the others' sessions did not move
            assert _served(gateway, headers={"x-session-id": session}) == {deployment: 1}


def _ctx_gateway(chaos, start_gateway, fallbacks):
    url = chaos[0].url
    return start_gateway(
        config(
            alias(
                "small",
                dep(url, "small", context_window=100),
                **({"fallbacks": fallbacks} if fallbacks else {}),
            ),
            alias("big", dep(url, "big", context_window=100_000)),
        )
    )


def test_a_prompt_too_long_for_the_window_goes_to_the_longer_one_without_calling(chaos, start_gateway):
    gateway = _ctx_gateway(chaos, start_gateway, [{"alias": "big", "on": ["context_window"]}])
    assert _served(gateway, "small", content="short") == {"small": 1}
    long = "word " * 200  # about 250 tokens by the estimate
    assert _served(gateway, "small", content=long) == {"big": 1}
    assert _served(gateway, "small", content="short", max_tokens=200) == {"big": 1}  # max_tokens counts
    assert chaos[1].requests["small"] == 1
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'gateway_fallbacks_total{alias="small",reason="context_window",to="big"} 2.0' in metrics


def test_a_prompt_too_long_for_every_window_is_refused_before_calling(chaos, start_gateway):
    gateway = _ctx_gateway(chaos, start_gateway, None)
    response = chat(gateway, "small", "word " * 200)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["type"] == "invalid_request_error" and "100 tokens" in error["message"]
    assert sum(chaos[1].requests.values()) == 0


@pytest.mark.parametrize(
    "fault, expected",
    [
        (Fault("status", status=400, code="context_length_exceeded"), "by-context"),
        (Fault("status", status=429, retry_after="60"), "by-rate"),
        (Fault("status", status=400, code="content_filter"), "by-policy"),
        (Fault("hang"), "by-timeout"),
        (Fault("status", status=500), "by-any"),
    ],
)
def test_each_error_class_goes_to_its_own_fallback(chaos, start_gateway, fault, expected):
    url = chaos[0].url
    chain: list[dict[str, Any]] = [
        {"alias": "by-context", "on": ["context_window"]},
        {"alias": "by-rate", "on": ["rate_limited"]},
        {"alias": "by-policy", "on": ["content_policy"]},
        {"alias": "by-timeout", "on": ["timeout"]},
        {"alias": "by-any", "on": ["any"]},
    ]
    gateway = start_gateway(
        config(
            alias(
                "chat",
                dep(url, "primary", timeouts={"attempt_s": 0.5}),
                retry={"attempts": 1},
                fallbacks=chain,
            ),
            *[alias(a["alias"], dep(url, a["alias"])) for a in chain],
        )
    )
    chaos[1].faults["primary"] = fault
    assert _served(gateway) == {expected: 1}
    assert sum(chaos[1].requests[a["alias"]] for a in chain) == 1


def test_an_error_of_no_listed_class_is_not_handed_over(chaos, start_gateway):
    url = chaos[0].url
    gateway = start_gateway(
        config(
            alias(
                "chat",
                dep(url, "primary"),
                retry={"attempts": 1},
                fallbacks=[{"alias": "backup", "on": ["rate_limited", "timeout"]}],
            ),
            alias("backup", dep(url, "backup")),
        )
    )
    chaos[1].faults["primary"] = Fault("status", status=500)
    assert chat(gateway, "chat").status_code == 500
    assert chaos[1].requests["backup"] == 0


def test_fallback_config_errors_name_the_field(chaos):
    from gateway.config import ConfigError, parse_config

    text = config(
        alias("chat", dep(chaos[0].url, "m"), fallbacks=[{"alias": "nope"}, {"alias": "chat"}]),
        alias("other", dep(chaos[0].url, "m"), dep(chaos[0].url, "m")),
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    assert info.value.problems == [
        "models[1].deployments[1].name: deployment id 'openai-compatible/m' is used twice in this alias "
        "(give each deployment a distinct name)",
        "models[0].fallbacks[0].alias: no model alias named 'nope'",
        "models[0].fallbacks[1].alias: an alias cannot fall back to itself",
    ]
    with pytest.raises(ConfigError) as info:
        parse_config(
            config(
                alias(
                    "chat",
                    dep(chaos[0].url, "m"),
                    routing={"strategy": "fastest"},
                    fallbacks=[{"alias": "x", "on": ["bad_luck"]}],
                )
            ),
            env={},
        )
    text = "\n".join(info.value.problems)
    assert "models[0].routing.strategy:" in text and "models[0].fallbacks[0].on[0]:" in text
