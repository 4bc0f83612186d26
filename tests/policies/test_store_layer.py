"""The store layer: its generic key/value surface on memory, Redis and Redis Cluster, one client per process
shared by every policy and kept across a reload, and the config that names a cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway.config import load_config, parse_config
from gateway.keys import GATEWAY, STORES
from gateway.reload import Reloader
from policies.config import StoresConfig
from policies.stores import StoreLayer
from policies.stores.keyvalue import MemoryKeyValue
from tests.harness import ServerThread
from tests.policies.conftest import chat, policy_config, sdk
from tests.wait import eventually


async def test_strings_expire_and_are_deleted(store_layer: StoreLayer) -> None:
    kv = store_layer.kv
    await kv.set("gw:{x}:a", "one")
    await kv.set("gw:{x}:b", "two", ttl_s=0.05)
    assert await kv.get("gw:{x}:a") == "one" and await kv.get("gw:{x}:b") == "two"

    async def expired() -> bool:  # on Redis's clock (PX): polled, not waited out
        return await kv.get("gw:{x}:b") is None

    await eventually(expired, what="the string with a TTL gone")
    assert await kv.delete("gw:{x}:a", "gw:{x}:b") == 1
    assert await kv.get("gw:{x}:a") is None


async def test_many_strings_are_read_at_once_in_order(store_layer: StoreLayer) -> None:
    kv = store_layer.kv
    for i in range(0, 40, 2):  # keys in many cluster slots, every other one absent
        await kv.set(f"gw:many:{i}", f"v{i}", ttl_s=60)
    found = await kv.get_many([f"gw:many:{i}" for i in range(40)])
    assert found == [f"v{i}" if i % 2 == 0 else None for i in range(40)]
    assert await kv.get_many([]) == []


async def test_a_lease_goes_to_one_caller_until_it_expires() -> None:
    # On Redis (SET NX PX) the batch tests run it across processes: tests/batches/test_durable.py
    now = [0.0]
    kv = MemoryKeyValue(clock=lambda: now[0])
    claims = [await kv.set_if_absent("gw:{lease}:1", f"p{i}", 2.0) for i in range(5)]
    assert claims == [True, False, False, False, False] and await kv.get("gw:{lease}:1") == "p0"
    now[0] = 1.9
    assert not await kv.set_if_absent("gw:{lease}:1", "late", 2.0)
    now[0] = 2.0  # expired: another may take it
    assert await kv.set_if_absent("gw:{lease}:1", "after", 2.0) and await kv.get("gw:{lease}:1") == "after"


async def test_memory_purges_expired_keys_nobody_reads_again() -> None:
    now = [0.0]
    kv = MemoryKeyValue(clock=lambda: now[0])
    for i in range(MemoryKeyValue.PURGE_EVERY - 1):
        await kv.set(f"old{i}", "x", ttl_s=10)
    now[0] = 11.0
    await kv.set("new", "y", ttl_s=10)  # the PURGE_EVERY-th expiring write: the expired ones go
    assert kv._data.keys() == {"new"} and kv._expiry.keys() == {"new"}


async def test_hashes_set_increment_and_read_whole(store_layer: StoreLayer) -> None:
    kv = store_layer.kv
    assert await kv.hash_get("gw:{job:1}") == {}
    await kv.hash_set("gw:{job:1}", {"state": "queued", "lines": "0"}, ttl_s=60)
    assert await kv.hash_incr("gw:{job:1}", "lines", 5) == 5
    assert await kv.hash_incr("gw:{job:1}", "done") == 1
    await kv.hash_set("gw:{job:1}", {"state": "running"})
    assert await kv.hash_get("gw:{job:1}") == {"state": "running", "lines": "5", "done": "1"}


async def test_lists_keep_their_newest_items_in_order(store_layer: StoreLayer) -> None:
    kv = store_layer.kv
    for i in range(5):
        length = await kv.append("gw:{audit}:acme", f"event {i}", max_len=3, ttl_s=60)
    assert length == 3
    assert await kv.items("gw:{audit}:acme") == ["event 2", "event 3", "event 4"]
    assert await kv.items("gw:{audit}:acme", 0, 0) == ["event 2"]
    assert await kv.items("gw:{audit}:acme", -2) == ["event 3", "event 4"]
    assert await kv.items("gw:{audit}:nobody") == []


@pytest.mark.parametrize("store_kind", ["redis", "cluster"], indirect=True)
def test_one_client_serves_every_policy_and_survives_a_reload(
    upstream, stores_yaml: str, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    text = policy_config(
        upstream[0].url, acme="    limits: {rpm: 1000}\n    cache: {enabled: true}", stores=stores_yaml
    )
    path.write_text(text)
    loaded = load_config(str(path))
    from gateway.app import build_app

    server = ServerThread(lambda: build_app(loaded)).start()
    try:
        assert server.app is not None
        layer = server.app[STORES]
        client = layer.redis
        gateway = server.app[GATEWAY]
        pipeline = gateway.pipeline
        assert client is not None and gateway.stores is layer
        assert pipeline.admission.layer is layer
        assert pipeline.resilience.breakers.store._layer is layer  # type: ignore[attr-defined]
        assert pipeline.cache.answers._layer is layer  # type: ignore[attr-defined]
        with sdk(server) as openai_client:
            assert chat(openai_client).parse().choices
        path.write_text(text.replace("rpm: 1000", "rpm: 2000"))
        reloader = Reloader(server.app, str(path))
        assert asyncio.run_coroutine_threadsafe(reloader.reload(), server.loop).result(30) is True
        fresh = server.app[GATEWAY]
        assert fresh.pipeline is not pipeline and fresh.stores is layer and layer.redis is client
        with sdk(server) as openai_client:
            assert chat(openai_client).parse().choices  # the retired gateway closed nothing of the client's
        asyncio.run_coroutine_threadsafe(reloader.close(), server.loop).result(30)  # the old gateway closed
        assert "gateway_store_degraded 0.0" in httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    assert layer.redis is None  # closed with the app


def test_a_cluster_is_named_by_redis_cluster() -> None:
    loaded = parse_config("stores: {redis_url: 'redis://10.0.0.1:7000', redis_cluster: true}\n")
    assert StoreLayer(loaded.config.stores).name == "redis-cluster"
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        parse_config("stores: {redis_cluster: true}\n")
    assert any(p.startswith("stores: ") and "redis_cluster needs" in p for p in exc.value.problems), (
        exc.value.problems
    )


async def test_a_restarted_redis_is_used_by_the_very_next_command(own_redis):
    """The pooled connection outlived its server: its next command is sent again on a fresh connection
    instead of failing with "Connection closed by server" (and marking Redis down)."""
    async with StoreLayer(StoresConfig(redis_url=own_redis.url)) as layer:
        await layer.redis.set("k", "1")
        own_redis.stop()
        own_redis.start()  # a new, empty server on the same port
        assert await layer.redis.get("k") is None
        assert not layer.health.degraded
