"""Circuit breakers: the state machine, end to end through the gateway, and shared through Redis."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from errors import Unavailable
from gateway.app import build_app
from gateway.config import parse_config
from gateway.keys import GATEWAY
from policies.breaker import Breakers, MemoryStore, RedisStore, State, View
from policies.clock import SYSTEM, Clock, ManualClock
from policies.config import StoresConfig
from policies.resilience_config import BreakerConfig
from policies.stores.layer import StoreLayer
from tests.fakes.chaos_upstream import Fault
from tests.harness import ServerThread, free_port
from tests.resilience.conftest import ADMIN_KEY, admin_deployments, alias, chat, config, dep
from tests.wait import wait_for

FAST = BreakerConfig(failures=3, failure_ratio=0.5, min_requests=10, window_s=10, cooldown_s=0.5, sync_s=0.1)


@pytest.fixture
def store(store_layer: StoreLayer) -> MemoryStore | RedisStore:
    """The same state machine on each store: Python in memory, the Lua script on one redis-server and on a
    Redis Cluster."""
    return RedisStore(FAST, store_layer) if store_layer.shared else MemoryStore(FAST)


async def test_consecutive_failures_open_and_a_success_resets_the_count(store):
    for _ in range(2):
        await store.op("d", "failure", 100.0)
    await store.op("d", "success", 100.0)
    assert (await store.op("d", "failure", 100.0))[0].state is State.CLOSED
    await store.op("d", "failure", 100.0)
    view, _ = await store.op("d", "failure", 100.0)
    assert view.state is State.OPEN and view.open_until == 100.5 and view.failures == 3


async def test_a_failure_ratio_over_the_window_opens(store):
    for i in range(10):  # alternate: never 3 in a row, but half of 10 fail
        view, _ = await store.op("d", "failure" if i % 2 else "success", 100.0 + i * 0.1)
    assert view.state is State.OPEN
    for i in range(10):  # the same failures spread beyond the window do not add up
        view, _ = await store.op("e", "failure" if i % 2 else "success", 100.0 + i * 5)
    assert view.state is State.CLOSED
    await store.op("f", "successes", 100.0, 20)  # batched successes count toward the window
    for i in range(12):
        view, _ = await store.op("f", "failure" if i % 3 else "success", 100.1 + i * 0.1)
    assert view.state is State.CLOSED  # 8 failures of 32 (of 12 without them: open)
    for i in range(12):
        view, _ = await store.op("g", "failure" if i % 3 else "success", 100.1 + i * 0.1)
    assert view.state is State.OPEN


async def test_half_open_lets_one_trial_through_which_closes_or_reopens(store):
    for _ in range(3):
        await store.op("d", "failure", 100.0)
    assert (await store.op("d", "trial", 100.2))[1] is False  # cooling down
    view, granted = await store.op("d", "trial", 100.6)
    assert granted and view.state is State.HALF_OPEN
    assert not (await store.op("d", "trial", 100.6))[1]  # one trial at a time
    view, _ = await store.op("d", "failure", 100.7)
    assert view.state is State.OPEN and view.open_until == pytest.approx(101.2)
    assert (await store.op("d", "trial", 101.3))[1]
    view, _ = await store.op("d", "success", 101.4)
    assert view.state is State.CLOSED and view.failures == 0
    assert (await store.read(["d", "never-seen"])) == {"d": view, "never-seen": View()}


async def test_times_at_the_epochs_scale_come_back_exact(store):
    """A cool-down ends at the instant it was set to end, also on Redis (where Lua's tostring once rounded
    1800000000.62346 up to 1800000000.6235, and a trial asked for at the exact end was refused)."""
    start = 1_800_000_000.12346
    for _ in range(3):
        view, _ = await store.op("d", "failure", start)
    assert view.open_until == start + FAST.cooldown_s
    view, granted = await store.op("d", "trial", start + FAST.cooldown_s)
    assert granted and view.trial_until == start + 2 * FAST.cooldown_s
    assert (await store.read(["d"]))["d"] == view


def _breaker_gateway(chaos, start_gateway, clock=SYSTEM, **extra):
    url = chaos[0].url
    return start_gateway(
        clock=clock,
        text=config(
            alias("chat", dep(url, "bad"), retry={"attempts": 1}, **extra),
            alias("backup", dep(url, "good")),
            resilience={"breaker": {"failures": 3, "cooldown_s": 0.5}},
        ),
    )


def test_breaker_opens_sheds_load_then_half_opens_and_closes(chaos, start_gateway):
    clock = ManualClock()
    gateway = _breaker_gateway(chaos, start_gateway, clock)
    chaos[1].faults["bad"] = Fault("status", status=500)
    assert [chat(gateway, "chat").status_code for _ in range(3)] == [500] * 3
    response = chat(gateway, "chat")
    assert response.status_code == 503 and response.json()["error"]["code"] == "circuit_open"
    assert chaos[1].requests["bad"] == 3  # the open breaker kept the 4th away from the upstream
    state = admin_deployments(gateway)["chat/openai-compatible/bad"]["breaker"]
    assert state["state"] == "open" and state["consecutive_failures"] == 3 and 0 < state["retry_in_s"] <= 0.5
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'gateway_breaker_state{deployment="chat/openai-compatible/bad"} 2.0' in metrics
    assert (
        'gateway_breaker_transitions_total{deployment="chat/openai-compatible/bad",state="open"}' in metrics
    )

    clock.advance(0.6)  # past the cool-down (0.5 s)
    chaos[1].faults.clear()  # the upstream recovered: the trial request goes through and closes it
    assert chat(gateway, "chat").status_code == 200
    assert admin_deployments(gateway)["chat/openai-compatible/bad"]["breaker"]["state"] == "closed"
    assert (
        'gateway_breaker_state{deployment="chat/openai-compatible/bad"} 0.0'
        in httpx.get(gateway.url + "/metrics").text
    )


def test_a_failed_trial_opens_the_breaker_again(chaos, start_gateway):
    clock = ManualClock()
    gateway = _breaker_gateway(chaos, start_gateway, clock)
    chaos[1].faults["bad"] = Fault("status", status=503)
    for _ in range(3):
        chat(gateway, "chat")
    clock.advance(0.6)  # past the cool-down (0.5 s)
    assert chat(gateway, "chat").status_code == 503  # the trial, failing
    assert chaos[1].requests["bad"] == 4
    assert chat(gateway, "chat").json()["error"]["code"] == "circuit_open"
    assert chaos[1].requests["bad"] == 4


def test_client_errors_never_count(chaos, start_gateway):
    gateway = _breaker_gateway(chaos, start_gateway)
    for status in (
        400,
        404,
        413,
        422,
        400,
        404,
        413,
        422,
        400,
        404,
    ):  # an upstream 401 is a 502 (the gateway's key)
        chaos[1].faults["bad"] = Fault("status", status=status)
        assert chat(gateway, "chat").status_code == status
    assert chaos[1].requests["bad"] == 10
    assert admin_deployments(gateway)["chat/openai-compatible/bad"]["breaker"]["state"] == "closed"


def test_an_upstream_refusing_the_gateways_key_counts_against_the_deployment(chaos, start_gateway):
    assert 401 not in BreakerConfig().ignore_status
    gateway = _breaker_gateway(chaos, start_gateway)
    chaos[1].faults["bad"] = Fault("status", status=401)
    for _ in range(3):
        response = chat(gateway, "chat")
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_auth_failed"
    assert admin_deployments(gateway)["chat/openai-compatible/bad"]["breaker"]["state"] == "open"
    assert chat(gateway, "chat").json()["error"]["code"] == "circuit_open"
    assert chaos[1].requests["bad"] == 3


def test_an_open_breaker_hands_the_alias_to_its_fallback(chaos, start_gateway):
    gateway = _breaker_gateway(chaos, start_gateway, fallbacks=[{"alias": "backup"}])
    chaos[1].faults["bad"] = Fault("status", status=500)
    for _ in range(3):
        assert chat(gateway, "chat").status_code == 200
    before = chaos[1].requests["bad"]
    response = chat(gateway, "chat")
    assert (
        response.status_code == 200 and response.headers["x-gateway-deployment"] == "openai-compatible/good"
    )
    assert chaos[1].requests["bad"] == before == 3


def test_admin_deployments_needs_an_admin_key(chaos, start_gateway):
    from tests.conftest import KEY

    gateway = _breaker_gateway(chaos, start_gateway)
    assert httpx.get(gateway.url + "/admin/deployments").status_code == 401
    response = httpx.get(gateway.url + "/admin/deployments", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
    body = admin_deployments(gateway)
    assert set(body) == {"chat/openai-compatible/bad", "backup/openai-compatible/good"}
    assert body["chat/openai-compatible/bad"]["strategy"] == "weighted"


# --- shared through Redis ---------------------------------------------------------------------------


def _redis_gateway(text: str, stores: str, clock: Clock = SYSTEM) -> ServerThread:
    """A gateway whose every store (limits, ledger, breakers, cache) is the Redis of ``stores`` (YAML lines)."""
    loaded = parse_config(text + "stores:\n" + stores + "\n", path="test-config.yaml", env={})
    return ServerThread(lambda: build_app(loaded, clock)).start()


def _shared_config(url: str) -> str:
    return config(
        alias("chat", dep(url, "bad"), retry={"attempts": 1}),
        resilience={"breaker": {"failures": 3, "cooldown_s": 1.0, "sync_s": 0.1}},
    )


def _local_state(gateway: ServerThread) -> State:
    """The breaker as the gateway's own view holds it (what its sync loop last read), read without a refresh."""
    assert gateway.app is not None
    return gateway.app[GATEWAY].pipeline.resilience.breakers.state("chat/openai-compatible/bad")


@pytest.mark.parametrize("store_kind", ["redis", "cluster"], indirect=True)
def test_two_gateways_share_a_breaker_through_redis(chaos, stores_yaml):
    clock = ManualClock()  # one clock for both: cool-downs are wall-clock times shared through Redis
    first = _redis_gateway(_shared_config(chaos[0].url), stores_yaml, clock)
    second = _redis_gateway(_shared_config(chaos[0].url), stores_yaml, clock)
    try:
        chaos[1].faults["bad"] = Fault("status", status=500)
        for _ in range(3):
            assert chat(first, "chat").status_code == 500
        wait_for(lambda: _local_state(second) is State.OPEN, what="the second gateway's sync to see it open")
        response = chat(second, "chat")  # the second never saw a failure itself
        assert response.status_code == 503 and response.json()["error"]["code"] == "circuit_open"
        assert chaos[1].requests["bad"] == 3
        body = httpx.get(
            second.url + "/admin/deployments", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ).json()
        assert body["breaker_store"] == "redis" and body["data"][0]["breaker"]["state"] == "open"
        clock.advance(1.1)  # past the cool-down (1 s)
        chaos[1].faults.clear()
        assert chat(second, "chat").status_code == 200  # the trial, on the other gateway, closes it for both
        wait_for(
            lambda: _local_state(first) is State.CLOSED, what="the first gateway's sync to see it closed"
        )
        assert chat(first, "chat").status_code == 200
        assert admin_deployments(first)["chat/openai-compatible/bad"]["breaker"]["state"] == "closed"
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("store_kind", ["redis", "cluster"], indirect=True)
async def test_only_one_process_gets_the_half_open_trial(stores_config):
    layers = [StoreLayer(stores_config) for _ in range(4)]  # four processes, a client each
    try:
        for layer in layers:
            await layer.open()
        clock = ManualClock()
        breakers = [Breakers(FAST, ["a/d"], layer, clock=clock) for layer in layers]
        for _ in range(3):
            await breakers[0].failure("a/d")
        for b in breakers:
            await b.snapshot()
            assert b.state("a/d") is State.OPEN and not await b.admit("a/d")
        clock.advance(FAST.cooldown_s + 0.1)  # past the cool-down
        granted = await asyncio.gather(*[b.admit("a/d") for b in breakers for _ in range(3)])
        assert sum(granted) == 1
        await breakers[1].success("a/d")
        for b in breakers:
            await b.snapshot()
            assert b.state("a/d") is State.CLOSED
    finally:
        for layer in layers:
            await layer.close()


async def test_redis_down_fails_open_to_process_memory():
    async with StoreLayer(StoresConfig(redis_url=f"redis://127.0.0.1:{free_port()}/0")) as layer:
        breakers = Breakers(FAST, ["a/d"], layer)
        started = time.monotonic()
        assert await breakers.admit("a/d")
        for _ in range(3):
            await breakers.failure("a/d")  # each falls back to memory after the connection is refused
        assert breakers.state("a/d") is State.OPEN and not await breakers.admit("a/d")
        assert time.monotonic() - started < 2
        await breakers.snapshot()
        assert breakers.state("a/d") is State.OPEN
        assert layer.health.degraded


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


async def _eventually(condition, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_fail_closed_refuses_a_trial_while_redis_is_away_and_recovers(own_redis):
    stores = StoresConfig(
        redis_url=own_redis.url, on_redis_error="fail_closed", redis_timeout_s=0.2, retry_redis_after_s=0.2
    )
    async with StoreLayer(stores) as layer:
        clock = ManualClock(start=1_800_000_000.12346)  # a time whose cool-down end Lua's tostring rounded up
        breakers = Breakers(FAST, ["a/d"], layer, clock=clock)
        for _ in range(3):
            await breakers.failure("a/d")
        assert breakers.state("a/d") is State.OPEN
        own_redis.stop()
        clock.advance(FAST.cooldown_s)  # the cool-down: the next request would be the trial
        with pytest.raises(Unavailable) as refused:
            await breakers.admit("a/d")  # whether it may go cannot be decided without the shared state
        assert refused.value.status == 503 and layer.health.degraded
        await breakers.failure("a/d")  # an outcome is still counted (in memory), never raised
        own_redis.start()  # empty: the breaker starts closed again in Redis

        async def back() -> bool:
            await breakers.snapshot()  # a read: from Redis once it answers again
            return not layer.health.degraded

        await _eventually(back)
        assert breakers.state("a/d") is State.CLOSED and await breakers.admit("a/d")


def _metric(gateway: ServerThread, name: str) -> str:
    return "\n".join(
        line for line in httpx.get(gateway.url + "/metrics").text.splitlines() if line.startswith(name)
    )


def test_a_gateway_whose_redis_goes_away_keeps_its_breakers_in_memory_and_returns(chaos, own_redis):
    gateway = _redis_gateway(
        _shared_config(chaos[0].url),
        f"  redis_url: {own_redis.url}\n  redis_timeout_s: 0.2\n  retry_redis_after_s: 0.2",
    )
    try:
        assert chat(gateway, "chat").status_code == 200
        own_redis.stop()
        chaos[1].faults["bad"] = Fault("status", status=500)
        for _ in range(3):
            chat(gateway, "chat")
        assert chat(gateway, "chat").json()["error"]["code"] == "circuit_open"  # opened in process memory
        assert _metric(gateway, "gateway_store_degraded") == "gateway_store_degraded 1.0"
        assert 'operation="breaker_outcomes"' in _metric(gateway, "gateway_store_errors_total")
        chaos[1].faults.clear()
        own_redis.start()
        _until(lambda: chat(gateway, "chat").status_code == 200)  # Redis again: its breaker never opened
        assert _metric(gateway, "gateway_store_degraded") == "gateway_store_degraded 0.0"
    finally:
        gateway.stop()


async def test_a_batch_of_outcomes_counts_as_they_happened(store):
    """A process's outcomes pushed together: the window sees successes and failures in their real ratio;
    the consecutive count is the batch's trailing run when the batch holds a success."""
    view, _ = await store.op("d", "outcomes", 100.0, 2, successes=18, run=0, tenant="acme")
    assert view.state is State.CLOSED and view.failures == 0
    view, _ = await store.op("d", "outcomes", 100.1, 2, successes=0, tenant="acme")
    assert view.state is State.CLOSED and view.failures == 2 and view.by == "acme"  # 4 of 22 failed
    view, _ = await store.op("d", "outcomes", 100.2, 1, successes=5, run=1, tenant="acme")
    assert view.state is State.CLOSED and view.failures == 1
    view, _ = await store.op("d", "outcomes", 100.3, 2, successes=0, tenant="acme")
    assert view.state is State.OPEN and view.failures == 3  # three in a row


async def test_a_breaker_opened_by_one_tenant_gives_another_the_trial_at_once(store):
    for _ in range(3):
        view, _ = await store.op("d", "failure", 100.0, tenant="acme")
    assert view.state is State.OPEN and view.by == "acme"
    assert not (await store.op("d", "trial", 100.1, tenant="acme"))[1]  # acme waits out the cool-down
    view, granted = await store.op("d", "trial", 100.1, tenant="beta")  # beta may try at once
    assert granted and view.state is State.HALF_OPEN
    assert not (await store.op("d", "trial", 100.1, tenant="gamma"))[1]  # one trial at a time
    view, _ = await store.op("d", "failure", 100.2, tenant="beta")  # beta failed too: the upstream
    assert view.state is State.OPEN and view.by == "*"
    assert not (await store.op("d", "trial", 100.3, tenant="gamma"))[1]  # now everyone waits
