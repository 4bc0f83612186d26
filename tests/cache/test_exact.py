"""The exact cache through real HTTP: hits, isolation, eligibility, Cache-Control, expiry, purge, metrics."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from policies.clock import ManualClock
from tests.cache.conftest import ADMIN_KEY, ask, client_for, settle
from tests.conftest import KEY, OTHER_KEY
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread
from tests.openapi import validate

ON = {"enabled": True}


def upstream_calls(state: FakeState) -> int:
    return sum(1 for r in state.requests if r.path.endswith("/chat/completions"))


def test_repeated_request_is_served_from_the_cache(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as client:
        first, headers = ask(client, "What is the capital of France?")
        assert headers["x-cache"] == "miss"
        settle(server)
        second, headers = ask(client, "What is the capital of France?")
    assert headers["x-cache"] == "hit-exact"
    assert "x-gateway-deployment" not in headers
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.id != first.id
    assert upstream_calls(upstream[1]) == 1
    validate("CreateChatCompletionResponse", second.model_dump(mode="json", exclude_unset=True))


def test_key_ignores_json_key_order_and_whitespace(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    one = b'{"model":"chat","temperature":0,"messages":[{"role":"user","content":"Hi there"}]}'
    two = b'{ "messages" : [ { "content" : "Hi there", "role" : "user" } ],\n "temperature": 0.0, "model": "chat" }'
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/v1/chat/completions", content=one, headers=auth).headers["x-cache"] == "miss"
        settle(server)
        hit = http.post("/v1/chat/completions", content=two, headers=auth)
    assert hit.headers["x-cache"] == "hit-exact"
    assert upstream_calls(upstream[1]) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"key": OTHER_KEY},  # another tenant
        {"model": "other"},  # another alias
        {"system": "Answer in French."},  # another system prompt
        {
            "history": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]
        },  # earlier turns
        {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]},
        {"response_format": {"type": "json_object"}},
        {"max_tokens": 5},
        {"seed": 7},
    ],
)
def test_answers_are_never_shared_across_what_decides_them(
    cached_gateway: Callable[..., ServerThread],
    upstream: tuple[ServerThread, FakeState],
    change: dict[str, object],
) -> None:
    server = cached_gateway(ON)
    question = "What is the capital of France? Answer in JSON."
    change = dict(change)  # the parameter is shared by the runs on each store: never change it
    key = str(change.pop("key", KEY))
    with client_for(server) as client:
        ask(client, question)
    settle(server)
    with client_for(server, key) as client:
        _, headers = ask(client, question, **change)  # type: ignore[arg-type]
    assert headers["x-cache"] == "miss"
    assert upstream_calls(upstream[1]) == 2


def test_temperatures_do_not_share_answers_when_reuse_is_allowed(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway({"enabled": True, "reuse": "always"})
    with client_for(server) as client:
        ask(client, "Tell me a story", temperature=0.7)
        settle(server)
        assert ask(client, "Tell me a story", temperature=0.7)[1]["x-cache"] == "hit-exact"
        assert ask(client, "Tell me a story", temperature=0.2)[1]["x-cache"] == "miss"


def test_only_reusable_answers_are_cached(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as client:
        for _ in range(2):
            _, headers = ask(client, "Write a poem", temperature=1)
            assert "x-cache" not in headers
            _, headers = ask(client, "Write a poem", n=2)
            assert "x-cache" not in headers
            _, headers = ask(client, "Write a poem", logprobs=True)
            assert "x-cache" not in headers
            settle(server)
    assert upstream_calls(upstream[1]) == 6


def test_cache_is_off_unless_configured(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway({}, alias_cache={"enabled": False})
    with client_for(server) as client:
        for _ in range(2):
            _, headers = ask(client, "Same question")
            assert "x-cache" not in headers
    assert upstream_calls(upstream[1]) == 2


def test_per_tenant_and_alias_overrides(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    # off by default, on for alias chat, off again for tenant acme
    server = cached_gateway({}, alias_cache={"enabled": True}, acme_cache={"enabled": False})
    with client_for(server) as acme, client_for(server, OTHER_KEY) as globex:
        assert "x-cache" not in ask(acme, "Q")[1]
        assert ask(globex, "Q")[1]["x-cache"] == "miss"
        assert ask(globex, "Q", model="other")[1].get("x-cache") is None
        settle(server)
        assert ask(globex, "Q")[1]["x-cache"] == "hit-exact"


def test_cache_control_no_cache_and_no_store(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as client:
        assert ask(client, "A", headers={"Cache-Control": "no-store"})[1]["x-cache"] == "miss"
        settle(server)
        assert ask(client, "A")[1]["x-cache"] == "miss"  # nothing was stored
        settle(server)
        assert (
            ask(client, "A", headers={"Cache-Control": "no-cache"})[1]["x-cache"] == "miss"
        )  # lookup skipped
        assert ask(client, "A", headers={"Cache-Control": "no-store, no-cache"})[1]["x-cache"] == "miss"
        assert ask(client, "A")[1]["x-cache"] == "hit-exact"
    assert upstream_calls(upstream[1]) == 4


def test_entries_expire(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    clock = ManualClock()  # the gateway's: entries expire by it on every store
    server = cached_gateway({"enabled": True, "ttl_s": 60}, clock=clock)
    with client_for(server) as client:
        ask(client, "Expiring question")
        settle(server)
        assert ask(client, "Expiring question")[1]["x-cache"] == "hit-exact"
        clock.advance(59)
        assert ask(client, "Expiring question")[1]["x-cache"] == "hit-exact"
        clock.advance(1.5)
        assert ask(client, "Expiring question")[1]["x-cache"] == "miss"


# LRU is the memory store's policy; Redis evicts the soonest to expire (test_stores.py::test_size_cap_evicts)
@pytest.mark.parametrize("store_kind", ["memory"], indirect=True)
def test_size_cap_evicts_the_least_recently_used(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway({"enabled": True, "max_entries": 2})
    with client_for(server) as client:
        for question in ("one", "two"):
            ask(client, question)
        settle(server)
        assert ask(client, "one")[1]["x-cache"] == "hit-exact"  # "one" is now the most recently used
        ask(client, "three")
        settle(server)
        assert ask(client, "one")[1]["x-cache"] == "hit-exact"
        assert ask(client, "two")[1]["x-cache"] == "miss"


def test_admin_purges_a_tenants_or_an_aliases_entries(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as acme, client_for(server, OTHER_KEY) as globex:
        ask(acme, "P")
        ask(acme, "P", model="other")
        ask(globex, "P")
        settle(server)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            denied = http.delete("/admin/cache/acme", headers={"Authorization": f"Bearer {KEY}"})
            assert denied.status_code == 403
            assert denied.json()["error"]["code"] == "permission_denied"
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            assert http.delete("/admin/cache/nobody", headers=admin).status_code == 404
            bad = http.post("/admin/cache/purge", headers=admin, json={"alias": "chat"})
            assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
            purged = http.delete("/admin/cache/acme/chat", headers=admin)
            assert purged.status_code == 200 and purged.json()["purged"] == 1
        assert ask(acme, "P")[1]["x-cache"] == "miss"
        assert ask(acme, "P", model="other")[1]["x-cache"] == "hit-exact"
        assert ask(globex, "P")[1]["x-cache"] == "hit-exact"
        with httpx.Client(base_url=server.url, timeout=30) as http:
            purged = http.post(
                "/admin/cache/purge",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                json={"tenant": "acme"},
            )
            assert purged.status_code == 200 and purged.json()["purged"] >= 1
        assert ask(acme, "P", model="other")[1]["x-cache"] == "miss"
        assert ask(globex, "P")[1]["x-cache"] == "hit-exact"


def _cache_metrics(server: ServerThread) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("gateway_cache_") and 'tenant="globex"' in line
    }


def test_metrics_count_hits_misses_and_dollars_saved(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    hits = 'gateway_cache_lookups_total{alias="chat",result="hit-exact",tenant="globex"}'
    misses = 'gateway_cache_lookups_total{alias="chat",result="miss",tenant="globex"}'
    saved = 'gateway_cache_saved_usd_total{tenant="globex"}'
    before = _cache_metrics(server)
    with client_for(server, OTHER_KEY) as client:
        answer, _ = ask(client, "How much is this worth?")
        settle(server)
        ask(client, "How much is this worth?")
        ask(client, "How much is this worth?")
    after = _cache_metrics(server)
    assert after[hits] - before.get(hits, 0) == 2
    assert after[misses] - before.get(misses, 0) == 1
    # gpt-4o-mini at $0.15 / $0.60 per million prompt / completion tokens, saved twice
    usage = answer.usage
    assert usage is not None
    cost = (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.60) / 1e6
    assert after[saved] - before.get(saved, 0) == pytest.approx(2 * cost)


def test_embeddings_are_cached_exactly(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as client:
        first = client.embeddings.with_raw_response.create(model="embed", input=["a", "bb"])
        settle(server)
        second = client.embeddings.with_raw_response.create(model="embed", input=["a", "bb"])
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit-exact"
    assert second.parse().data[1].embedding == first.parse().data[1].embedding


def test_a_broken_stream_is_not_cached(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as client:
        for _ in range(2):
            stream = client.chat.completions.create(
                model="cut",
                temperature=0,
                stream=True,
                messages=[{"role": "user", "content": "one two three four"}],
            )
            with pytest.raises(openai.APIError):
                for _chunk in stream:
                    pass
            settle(server)
    assert upstream_calls(upstream[1]) == 2
