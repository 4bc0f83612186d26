"""The answer stores (memory, Redis, Redis Cluster) and the ResponseCache over them: expiry, the size cap,
purge, several gateway processes sharing Redis, Redis going away (fail open, fail closed), and the
qdrant-client index (local mode) for the semantic cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from backends import Endpoint, UpstreamResponse
from errors import Unavailable
from policies.cache import CacheConfig, ResponseCache
from policies.cache.exact import AnswerStore, Caps, MemoryStore, RedisStore, entry_key
from policies.call import Call
from policies.clock import ManualClock
from policies.config import StoresConfig
from policies.record import RequestRecord
from policies.stores.layer import StoreLayer
from tests.redis_server import RedisServer


@pytest.fixture
def store_factory(store_layer: StoreLayer) -> Any:
    def make(
        max_entries: int = 100,
        max_bytes: int = 1 << 30,
        max_entry_bytes: int = 1 << 20,
        clock: Callable[[], float] = time.time,
    ) -> AnswerStore:
        caps = Caps(max_entries, max_bytes, max_entry_bytes)
        return RedisStore(store_layer, caps, clock=clock) if store_layer.shared else MemoryStore(caps, clock)

    return make


async def test_get_set_and_expiry(store_factory: Any) -> None:
    clock = ManualClock()  # entries expire by the gateway's clock on both stores
    store = store_factory(clock=clock.time)
    key = entry_key("acme", "chat", "abc")
    assert await store.get(key) is None
    await store.set(key, b"answer", ttl_s=60)
    assert await store.get(key) == b"answer"
    clock.advance(59.9)
    assert await store.get(key) == b"answer"
    clock.advance(0.2)
    assert await store.get(key) is None


async def test_size_cap_evicts(store_factory: Any) -> None:
    store = store_factory(max_entries=3)
    for i in range(5):
        await store.set(entry_key("acme", "chat", str(i)), b"x", ttl_s=60 + i)
    kept = [i for i in range(5) if await store.get(entry_key("acme", "chat", str(i))) is not None]
    assert kept == [2, 3, 4]


async def test_bytes_cap_evicts_and_oversized_answers_are_not_kept(store_factory: Any) -> None:
    store = store_factory(max_bytes=3 * 1500, max_entry_bytes=2000)
    for i in range(5):
        await store.set(entry_key("acme", "chat", str(i)), b"x" * 1000, ttl_s=60 + i)
    kept = [i for i in range(5) if await store.get(entry_key("acme", "chat", str(i))) is not None]
    assert kept in ([1, 2, 3, 4], [2, 3, 4])  # 1000 bytes each plus the key's (and in memory the slot's)
    await store.set(entry_key("acme", "chat", "big"), b"y" * 2001, ttl_s=60)
    assert await store.get(entry_key("acme", "chat", "big")) is None
    assert await store.get(entry_key("acme", "chat", "4")) == b"x" * 1000  # the oversized one evicted nothing
    assert await store.purge("acme") == len(kept)
    for i in range(3):  # the purge gave the bytes back
        await store.set(entry_key("acme", "chat", f"again{i}"), b"z" * 1000, ttl_s=60)
    assert all([await store.get(entry_key("acme", "chat", f"again{i}")) for i in range(3)])


async def test_purge_by_tenant_and_alias_never_touches_lookalikes(store_factory: Any) -> None:
    store = store_factory()
    names = [("acme", "chat"), ("acme", "other"), ("acme:chat", "x"), ("acme*", "chat"), ("globex", "chat")]
    for tenant, alias in names:
        await store.set(entry_key(tenant, alias, "k"), b"v", ttl_s=60)
    assert await store.purge("acme", "chat") == 1
    assert await store.get(entry_key("acme", "chat", "k")) is None
    assert await store.get(entry_key("acme", "other", "k")) == b"v"
    assert await store.purge("acme") == 1
    for tenant, alias in names[2:]:
        assert await store.get(entry_key(tenant, alias, "k")) == b"v"


def _call(question: str, tenant: str = "acme", **body: Any) -> Call:
    record = RequestRecord(request_id="r", started=0.0, endpoint="chat/completions")
    payload = {"model": "chat", "temperature": 0, "messages": [{"role": "user", "content": question}], **body}
    return Call(
        record=record,
        tenant=tenant,
        key_id="k",
        alias="chat",
        endpoint=Endpoint.CHAT,
        body=payload,
        stream=False,
    )


def _answer(text: str) -> UpstreamResponse:
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000},
    }
    return UpstreamResponse(status=200, data=data)


@pytest.mark.parametrize("store_kind", ["redis", "cluster"], indirect=True)
async def test_gateway_processes_share_answers_through_redis(stores_config: StoresConfig) -> None:
    config = CacheConfig(enabled=True)
    layers = [StoreLayer(stores_config), StoreLayer(stores_config)]  # two processes, a client each
    for layer in layers:
        await layer.open()
    one, two = ResponseCache(config, stores=layers[0]), ResponseCache(config, stores=layers[1])
    try:
        for cache in (one, two):
            await cache.start()
        call = _call("Shared?")
        assert await one.lookup(call) is None and call.record.cache == "miss"
        one.store(call, _answer("yes"))
        await one.drain()
        again = _call("Shared?")
        hit = await two.lookup(again)
        assert hit is not None and hit.data is not None
        assert hit.data["choices"][0]["message"]["content"] == "yes"
        assert again.record.cache == "hit-exact" and again.record.cost_usd == 0
        assert again.record.saved_usd == pytest.approx((1000 * 0.15 + 1000 * 0.60) / 1e6)
        assert await two.lookup(_call("Shared?", tenant="globex")) is None
        assert await two.purge("acme") == 1
        assert await one.lookup(_call("Shared?")) is None
    finally:
        for cache in (one, two):
            await cache.close()
        for layer in layers:
            await layer.close()


async def test_semantic_cache_with_qdrant_client_index_and_expiry() -> None:
    config = CacheConfig.model_validate(
        {
            "enabled": True,
            "ttl_s": 1.5,
            "semantic": {"enabled": True, "index": "qdrant", "url": ":memory:", "timeout_s": 10},
        }
    )
    clock = ManualClock()  # entries expire by the gateway's clock: a loaded machine cannot eat the TTL
    cache = ResponseCache(config, clock=clock.time)
    await cache.start()
    try:
        await cache.embedder.ready()  # the TTL runs from the store call: don't spend it loading the model
        stored = _call("What is the capital of France?")
        await cache.lookup(stored)
        cache.store(stored, _answer("Paris"))
        await cache.drain()
        paraphrase = _call("Which city is the capital of France?")
        hit = await cache.lookup(paraphrase)
        assert hit is not None and paraphrase.record.cache == "hit-semantic"
        assert float(paraphrase.record.response_headers["x-cache-similarity"]) > 0.7
        near_miss = _call("What is the capital of Germany?")
        assert await cache.lookup(near_miss) is None and near_miss.record.cache == "miss"
        other_tenant = _call("Which city is the capital of France?", tenant="globex")
        assert await cache.lookup(other_tenant) is None
        clock.advance(1.4)
        assert await cache.lookup(_call("Which city is the capital of France?")) is not None
        clock.advance(0.2)
        assert await cache.lookup(_call("Which city is the capital of France?")) is None
    finally:
        await cache.close()


def test_config_errors_name_the_field() -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as exc:
        parse_config(
            "cache: {semantic: {enabled: true, index: qdrant}}\ntenants: [{name: a, cache: {ttl_s: -1}}]\n"
        )
    problems = "\n".join(exc.value.problems)
    assert "cache.semantic" in problems and "url" in problems
    assert "tenants[0].cache.ttl_s" in problems


async def test_an_unreachable_store_fails_open_to_this_process_memory() -> None:
    from tests.harness import free_port

    async with StoreLayer(
        StoresConfig(redis_url=f"redis://127.0.0.1:{free_port()}", redis_timeout_s=0.5)
    ) as layer:
        cache = ResponseCache(CacheConfig(enabled=True), stores=layer)
        await cache.start()
        try:
            call = _call("Anyone there?")
            assert await cache.lookup(call) is None
            assert call.record.cache == "miss" and layer.health.degraded
            cache.store(call, _answer("no"))
            await cache.drain()
            again = _call("Anyone there?")
            assert await cache.lookup(again) is not None and again.record.cache == "hit-exact"  # from memory
        finally:
            await cache.close()


async def _eventually(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_redis_going_away_and_back_fail_open(own_redis: RedisServer) -> None:
    stores = StoresConfig(redis_url=own_redis.url, redis_timeout_s=0.2, retry_redis_after_s=0.2)
    async with StoreLayer(stores) as layer:
        cache = ResponseCache(CacheConfig(enabled=True), stores=layer)
        await cache.start()
        try:
            first = _call("Before?")
            await cache.lookup(first)
            cache.store(first, _answer("stored in Redis"))
            await cache.drain()
            own_redis.stop()
            assert await cache.lookup(_call("Before?")) is None  # in Redis, which is away: a miss
            assert layer.health.degraded
            during = _call("During?")
            cache.store(during, _answer("kept in memory"))
            await cache.drain()
            assert await cache.lookup(_call("During?")) is not None
            own_redis.start()  # back, empty

            async def recovered() -> bool:
                await cache.lookup(_call("After?"))
                return not layer.health.degraded

            await _eventually(recovered)
            after = _call("After?")
            cache.store(after, _answer("in Redis again"))
            await cache.drain()
            assert await layer.redis.dbsize() == 3  # the entry, its tenant's index and sizes
            assert await cache.purge("acme") == 2  # Redis's one and memory's one
        finally:
            await cache.close()


async def test_redis_going_away_fail_closed_refuses_lookups(own_redis: RedisServer) -> None:
    stores = StoresConfig(
        redis_url=own_redis.url, on_redis_error="fail_closed", redis_timeout_s=0.2, retry_redis_after_s=0.2
    )
    async with StoreLayer(stores) as layer:
        cache = ResponseCache(CacheConfig(enabled=True), stores=layer)
        await cache.start()
        try:

            async def answers() -> bool:
                try:
                    return await cache.lookup(_call("Q?")) is None
                except Unavailable:
                    return False

            # with Redis up a lookup answers (a first call on a busy machine may outlast the 0.2 s timeout)
            await _eventually(answers)
            own_redis.stop()
            with pytest.raises(Unavailable) as refused:
                await cache.lookup(_call("Q?"))
            assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
            own_redis.start()
            await _eventually(answers)
            assert not layer.health.degraded
        finally:
            await cache.close()


@pytest.mark.parametrize(
    ("defaults", "tenant", "alias", "semantic"),
    [
        ({"enabled": False, "semantic": {"enabled": True}}, None, None, False),
        ({"enabled": False, "semantic": {"enabled": True}}, {"enabled": True}, None, True),
        ({"enabled": True}, None, {"semantic": True}, True),
        ({"enabled": True, "semantic": {"enabled": True}}, {"semantic": False}, None, False),
        ({"enabled": True, "semantic": {"enabled": True}}, {"enabled": False}, None, False),
        ({"enabled": True, "semantic": {"enabled": True}}, None, None, True),
    ],
)
def test_the_model_is_loaded_only_if_someone_can_use_it(
    defaults: dict[str, Any], tenant: dict[str, Any] | None, alias: dict[str, Any] | None, semantic: bool
) -> None:
    from policies.cache import CacheOverride

    cache = ResponseCache(
        CacheConfig.model_validate(defaults),
        tenants={"acme": None if tenant is None else CacheOverride.model_validate(tenant)},
        aliases={"chat": None if alias is None else CacheOverride.model_validate(alias)},
    )
    assert cache.semantic_enabled is semantic


async def test_long_questions_use_the_exact_cache_only() -> None:
    config = CacheConfig.model_validate(
        {
            "enabled": True,
            "semantic": {
                "enabled": True,
                "index": "qdrant",
                "url": ":memory:",
                "timeout_s": 10,
                "max_question_chars": 200,
            },
        }
    )
    cache = ResponseCache(config)
    await cache.start()
    try:
        await cache.embedder.ready()
        code = "x = 1\n" * 60
        stored = _call("Fix this code:\n" + code + "y = 2")
        await cache.lookup(stored)
        cache.store(stored, _answer("fixed y = 2"))
        await cache.drain()
        index = cache.index
        assert (await index._client.count(index._name)).count == 0  # never embedded nor indexed
        other = _call("Fix this code:\n" + code + "y = 3")
        assert await cache.lookup(other) is None and other.record.cache == "miss"
        assert (
            await cache.lookup(_call("Fix this code:\n" + code + "y = 2"))
        ) is not None  # exact still hits
        short = _call("What is the capital of France?")
        await cache.lookup(short)
        cache.store(short, _answer("Paris"))
        await cache.drain()
        assert await cache.lookup(_call("Which city is the capital of France?")) is not None
    finally:
        await cache.close()
