"""Variants of a model alias (docs/variants.md): weighted split, stickiness per end user, pins by header and
by tenant, the variant's prompt and parameters, and what the answer, log line and metrics say."""

from __future__ import annotations

import collections
import json
import random
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import openai
import pytest

from gateway.auth import hash_key
from gateway.config import ConfigError, parse_config
from policies.variants import Selector
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY, log_line
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread


def _dep(url: str, name: str) -> str:
    return json.dumps(
        {
            "provider": "openai-compatible",
            "model": f"model-{name}",
            "name": name,
            "api_base": f"{url}/v1",
            "api_key": UPSTREAM_KEY,
        }
    )


def _config(url: str, v2_weight: float = 1.0, variants: dict[str, Any] | None = None) -> str:
    variants = variants or {
        "v1": {"deployments": ["a"], "weight": 1},
        "v2": {
            "deployments": ["b"],
            "weight": v2_weight,
            "system_prompt": "You are v2.",
            "params": {"temperature": 0.2},
        },
    }
    return f"""
server: {{log_requests: true}}
models:
  - name: chat
    deployments: [{_dep(url, "a")}, {_dep(url, "b")}]
    variants: {json.dumps(variants)}
tenants:
  - {{name: acme, keys: ["{hash_key(KEY)}"]}}
  - {{name: globex, keys: ["{hash_key(OTHER_KEY)}"], variants: {{chat: v2}}}}
"""


@pytest.fixture
def gateway(upstream: tuple[ServerThread, FakeState], start_gateway: Any) -> ServerThread:
    return start_gateway(_config(upstream[0].url))


@pytest.fixture
def client(gateway: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def _ask(client: openai.OpenAI, **kwargs: Any) -> tuple[str, Mapping[str, str]]:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], **kwargs
    )
    raw.parse()
    return raw.headers["x-gateway-variant"], raw.headers


def test_the_selector_follows_the_weights_within_3_percent_over_10k():
    weights = {"stable": 70.0, "candidate": 20.0, "experiment": 10.0}
    selector = Selector(weights, random.Random(1234))
    counts = collections.Counter(selector.pick() for _ in range(10_000))
    by_user = collections.Counter(selector.pick(f"user-{i}") for i in range(10_000))
    for name, weight in weights.items():
        assert abs(counts[name] / 10_000 - weight / 100) <= 0.03, counts
        assert abs(by_user[name] / 10_000 - weight / 100) <= 0.03, by_user


def test_a_variant_of_weight_zero_is_never_picked_by_weight():
    selector = Selector({"stable": 1.0, "dark": 0.0}, random.Random(7))
    assert {selector.pick() for _ in range(500)} | {selector.pick(f"u{i}") for i in range(500)} == {"stable"}


def test_traffic_splits_by_weight_and_each_variant_uses_its_own_deployments(client, upstream):
    served: collections.Counter[str] = collections.Counter()
    for i in range(200):
        variant, _ = _ask(client, user=f"user-{i}")
        served[variant] += 1
        model = upstream[1].requests[-1].body["model"]
        assert model == {"v1": "model-a", "v2": "model-b"}[variant]
    assert 80 <= served["v1"] <= 120 and served["v1"] + served["v2"] == 200, served


def test_one_end_user_stays_on_one_variant(client, upstream, gateway):
    for user in ("alice", "bob", "carol", "dave"):
        assert len({_ask(client, user=user)[0] for _ in range(10)}) == 1
    session = {"x-gateway-session": "s-42"}
    seen = {
        httpx.post(
            gateway.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}", **session},
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        ).headers["x-gateway-variant"]
        for _ in range(10)
    }
    assert len(seen) == 1


def test_the_header_pins_a_variant_and_an_unknown_name_is_a_400(client, upstream):
    for _ in range(5):
        assert _ask(client, extra_headers={"x-gateway-variant": "v2"})[0] == "v2"
        assert _ask(client, extra_headers={"x-gateway-variant": "v1"})[0] == "v1"
    with pytest.raises(openai.BadRequestError) as info:
        _ask(client, extra_headers={"x-gateway-variant": "v9"})
    assert info.value.param == "x-gateway-variant" and "v1, v2" in info.value.message


def test_a_tenant_pin_sends_all_its_traffic_to_its_variant(gateway, upstream):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=20) as globex:
        assert {_ask(globex, user=f"u{i}")[0] for i in range(20)} == {"v2"}
        assert _ask(globex, extra_headers={"x-gateway-variant": "v1"})[0] == "v1"  # the header wins


def test_the_variant_prompt_and_parameter_defaults_are_applied(client, upstream):
    _ask(client, extra_headers={"x-gateway-variant": "v2"})
    body = upstream[1].requests[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "You are v2."},
        {"role": "user", "content": "hi"},
    ]
    assert body["temperature"] == 0.2
    _ask(client, extra_headers={"x-gateway-variant": "v2"}, temperature=0.9)
    assert upstream[1].requests[-1].body["temperature"] == 0.9  # the client's own value stays
    _ask(client, extra_headers={"x-gateway-variant": "v1"})
    body = upstream[1].requests[-1].body
    assert body["messages"] == [{"role": "user", "content": "hi"}] and "temperature" not in body


def test_the_log_line_and_metrics_name_the_variant(client, gateway):
    _, headers = _ask(client, extra_headers={"x-gateway-variant": "v2"})
    assert log_line(headers["x-request-id"])["variant"] == "v2"
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'gateway_variant_requests_total{alias="chat",status="200",variant="v2"}' in metrics
    assert 'gateway_variant_request_duration_seconds_count{alias="chat",variant="v2"}' in metrics


def test_variant_config_errors_name_the_field(upstream):
    bad = {"v1": {"deployments": ["a", "nope"]}, "v2": {"deployments": ["b"], "weight": 0}}
    with pytest.raises(ConfigError) as info:
        parse_config(_config(upstream[0].url, variants=bad), env={})
    assert any("variants.v1.deployments[1]" in p and "'nope'" in p for p in info.value.problems)
    text = _config(upstream[0].url).replace("variants: {chat: v2}", "variants: {chat: v7}")
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    assert any(p.startswith("tenants[1].variants.chat:") for p in info.value.problems)


def test_canary_and_shadow_must_name_another_variant(upstream):
    bad = {
        "v1": {"deployments": ["a"], "shadow": {"variant": "v9", "share": 0.1}},
        "v2": {"deployments": ["b"], "canary": {"stable": "v2"}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(_config(upstream[0].url, variants=bad), env={})
    assert any(
        p.startswith("models.chat.variants.v1.shadow.variant:") and "'v9'" in p for p in info.value.problems
    )
    assert any(p.startswith("models.chat.variants.v2.canary.stable:") for p in info.value.problems)
    too_much = {"v1": {"deployments": ["a"], "shadow": {"variant": "v1", "share": 1.5}}}
    with pytest.raises(ConfigError) as info:
        parse_config(_config(upstream[0].url, variants=too_much), env={})
    assert any("share" in p for p in info.value.problems)
