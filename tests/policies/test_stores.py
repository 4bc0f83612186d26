"""Admission's store behind one interface: the same checks on memory, one Redis and a Redis Cluster (every
script's keys in one slot); Redis going away and coming back."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from policies.clock import ManualClock, utc_day
from policies.config import StoresConfig
from policies.stores.base import Bucket, Reservation, Settlement, Slot, Spend
from policies.stores.layer import StoreLayer
from policies.stores.memory import MemoryStore
from policies.stores.redis import RedisStore
from tests.policies.conftest import chat, policy_config, sdk, settled, usage
from tests.wait import eventually

# The policies' clock: it names the day of every reservation, and the stores age records and budget days by it.
# Noon (UTC) of today: whatever the date, the seconds a test advances it never cross into another day.
CLOCK = ManualClock(start=time.time() // 86400 * 86400 + 43200)
DAY = utc_day(CLOCK.time())
SPEND = f"gw:{{t:acme}}:spend:d:{DAY}"


@pytest.fixture
async def store(store_layer: StoreLayer):
    if not store_layer.shared:
        yield MemoryStore(clock=CLOCK.time)
        return
    redis = RedisStore(store_layer, clock=CLOCK)
    yield redis
    await redis.close()


def reservation(entry: str, *, cost: float = 1.0, lease_s: float = 60.0, est_cost: int = 1000) -> Reservation:
    return Reservation(
        entry_id=entry,
        tenant="acme",
        key_id="k",
        alias="chat",
        day=DAY,
        ts=CLOCK.time(),
        buckets=[Bucket("gw:{t:acme}:tpm", 100.0, 0.001, cost, "tokens", "tenant", 100)],
        slots=[Slot("gw:{t:acme}:inflight", 2, "tenant")],
        spends=[Spend(SPEND, 5000, 4000, 3600, "tenant daily")],
        est_prompt=10,
        est_completion=int(cost) - 10,
        est_cost=est_cost,
        lease_s=lease_s,
    )


def settlement(r: Reservation, prompt: int, completion: int, cost: int) -> Settlement:
    return Settlement(r, "dep", prompt, completion, 0, cost, 200, 1.0, False, False)


async def test_an_admission_sent_again_is_admitted_once(store) -> None:
    # redis-py sends a command again on a fresh connection when its connection failed, also after Redis ran
    # it: the same attempt must find its own reservation, not a "dup" that admission would then admit a
    # second time under another id (two ledger records for one request).
    first = reservation("again", cost=30)
    assert (await store.admit(first)).outcome == "ok"
    assert (await store.admit(first)).outcome == "ok"
    assert await store.spent(SPEND) == (0, 1000)  # reserved once
    assert (await store.admit(reservation("other", cost=60))).outcome == "ok"  # 30 taken once, not twice
    assert (await store.admit(reservation("again", cost=1))).outcome == "dup"  # another request, same id


async def test_admit_is_all_or_nothing(store):
    first = await store.admit(reservation("a", cost=60))
    assert first.outcome == "ok" and first.levels == [pytest.approx(40, abs=0.1)]
    refused = await store.admit(reservation("b", cost=60))  # the bucket has 40 left
    assert refused.outcome == "bucket" and refused.retry_after > 1000
    assert await store.spent(SPEND) == (0, 1000)  # b reserved nothing
    assert (await store.admit(reservation("a", cost=1))).outcome == "dup"
    assert (await store.admit(reservation("c", cost=200))).outcome == "too_large"


async def test_settle_refunds_tokens_moves_spend_and_is_idempotent(store):
    r = reservation("a", cost=60)
    await store.admit(r)
    assert await store.settle(settlement(r, 10, 20, 700)) is True
    assert await store.settle(settlement(r, 10, 20, 700)) is False  # never doubled
    assert await store.spent(SPEND) == (700, 0)
    nxt = await store.admit(reservation("b", cost=60))
    assert nxt.levels == [pytest.approx(100 - 30 - 60, abs=0.2)]  # 30 of the 60 reserved came back
    [record] = await store.records("acme", 0, CLOCK.time() + 10, 100)
    assert record["cost_nusd"] == 700 and record["state"] == "settled"
    aggregates = await store.aggregates("acme", [DAY])
    assert aggregates[DAY]["requests|chat|k"] == 1
    assert aggregates[DAY]["cost_nusd|chat|k"] == 700


async def test_in_flight_slots_and_budget_refuse(store):
    await store.admit(reservation("a", cost=1))
    await store.admit(reservation("b", cost=1))
    assert (await store.admit(reservation("c", cost=1))).outcome == "slot"
    budget = await store.admit(reservation("d", cost=1, est_cost=5000))
    assert budget.outcome in ("slot", "budget")
    r = reservation("a", cost=1)
    await store.settle(settlement(r, 1, 0, 10))
    over = await store.admit(reservation("e", cost=1, est_cost=4000))
    assert over.outcome == "budget"  # 10 spent + 1000 reserved + 4000 > 5000
    soft = await store.admit(reservation("f", cost=1, est_cost=3000))
    assert soft.outcome == "ok" and soft.soft == [0]


async def test_requests_arriving_together_are_decided_one_after_the_other(store):
    # one turn of the event loop: on Redis one script call for all of them, which must decide exactly as
    # separate calls would (the bucket has room for 3 of 30, the in-flight cap for 2)
    results = await asyncio.gather(
        *(store.admit(reservation(f"r{i}", cost=30)) for i in range(6)),
        store.admit(reservation("r0", cost=1)),
    )
    assert [r.outcome for r in results] == ["ok", "ok", "slot", "slot", "slot", "slot", "dup"]
    assert [r.levels for r in results[:2]] == [[pytest.approx(70, abs=0.1)], [pytest.approx(40, abs=0.1)]]
    assert await store.spent(SPEND) == (0, 2000)
    admitted = [reservation(f"r{i}", cost=30) for i in range(2)]
    done = await asyncio.gather(
        *(store.settle(settlement(r, 5, 10, 300 + i)) for i, r in enumerate(admitted * 2))
    )
    assert sorted(done) == [False, False, True, True]  # settled together, still once each
    assert await store.spent(SPEND) == (601, 0)
    after = await store.admit(reservation("next", cost=1))
    assert after.levels == [pytest.approx(100 - 15 - 15 - 1, abs=0.2)]  # each got back the 15 it did not use
    aggregates = (await store.aggregates("acme", [DAY]))[DAY]
    assert (aggregates["requests|chat|k"], aggregates["cost_nusd|chat|k"]) == (2, 601)
    assert aggregates["prompt_tokens|chat|k"] == 10 and aggregates["completion_tokens|chat|k"] == 20
    assert len(await store.records("acme", 0, CLOCK.time() + 10, 100)) == 2


async def test_a_deployment_cap_taken_by_many_at_once(store):
    key = "gw:{d:dep}:inflight"
    taken = await asyncio.gather(*(store.acquire(key, 3, f"h{i}", 60.0) for i in range(5)))
    assert taken == [True, True, True, False, False]
    await asyncio.gather(store.release(key, "h0"), store.release(key, "h1"), store.release(key, "h1"))
    assert await asyncio.gather(*(store.acquire(key, 3, f"n{i}", 60.0) for i in range(3))) == [
        True,
        True,
        False,
    ]
    assert await store.acquire(key, 4, "short", 0.01) is True
    assert await store.acquire(key, 4, "late", 60.0) is False
    CLOCK.advance(0.05)  # memory's leases end by the policies' clock, Redis's by its own
    assert await eventually(lambda: store.acquire(key, 4, "late", 60.0))  # a lease that ended frees its slot


async def test_sweeper_settles_a_dead_process_reservation_at_its_estimate_once(store):
    r = reservation("lost", cost=50, lease_s=0.2)
    await store.admit(r)
    assert await store.sweep(["acme"]) == 0  # not yet overdue
    CLOCK.advance(0.3)
    assert await eventually(lambda: store.sweep(["acme"])) == 1
    assert await store.sweep(["acme"]) == 0
    assert await store.settle(settlement(r, 1, 1, 1)) is False  # a late settlement is not counted twice
    [record] = await store.records("acme", 0, CLOCK.time() + 10, 100)
    assert record["state"] == "estimated" and record["cost_nusd"] == 1000
    assert await store.spent(SPEND) == (1000, 0)
    assert (await store.admit(reservation("next", cost=1))).outcome == "ok"  # its slot was freed


def test_fail_open_serves_from_memory_and_recovers_when_redis_returns(upstream, start_gateway, own_redis):
    clock = ManualClock()
    import httpx

    server = start_gateway(
        policy_config(
            upstream[0].url,
            acme="    limits: {rpm: 1000}",
            stores=f"""
  redis_url: {own_redis.url}
  on_redis_error: fail_open
  redis_timeout_s: 0.2
  retry_redis_after_s: 0.3""",
        ),
        clock=clock,
    )
    with sdk(server) as client:
        chat(client)
        own_redis.stop()
        assert chat(client).parse().choices  # Redis is gone: admitted from this process's memory
        metrics = httpx.get(server.url + "/metrics").text
        assert 'gateway_store_errors_total{mode="fail_open",operation=' in metrics  # admit or the sweeper's
        assert "gateway_store_degraded 1.0" in metrics
        own_redis.start()
        clock.advance(0.4)  # past retry_redis_after_s: the store tries Redis again
        assert chat(client).parse().choices
        assert "gateway_store_degraded 0.0" in httpx.get(server.url + "/metrics").text
    settled(server)
    rows = usage(server, tenant="acme", group_by="request").json()["data"]
    # the restarted Redis is empty: the request after its return, and the one served from memory during the
    # outage, replayed into it
    assert len(rows) == 2


def test_fail_closed_answers_503_and_recovers(upstream, start_gateway, own_redis):
    clock = ManualClock()
    server = start_gateway(
        policy_config(
            upstream[0].url,
            stores=f"""
  redis_url: {own_redis.url}
  on_redis_error: fail_closed
  redis_timeout_s: 0.2
  retry_redis_after_s: 0.3""",
        ),
        clock=clock,
    )
    with sdk(server) as client:
        chat(client)
        own_redis.stop()
        with pytest.raises(openai.InternalServerError) as refused:
            chat(client)
        assert refused.value.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "1"
        own_redis.start()
        clock.advance(0.4)  # past retry_redis_after_s: the store tries Redis again
        assert chat(client).parse().choices


async def test_closing_the_redis_store_writes_the_settlements_still_queued(redis_server):
    async with StoreLayer(StoresConfig(redis_url=redis_server.url)) as layer:
        first = RedisStore(layer)
        r = reservation("closing", cost=30)
        assert (await first.admit(r)).outcome == "ok"
        queued = asyncio.get_running_loop().create_task(first.settle(settlement(r, 5, 10, 300)))
        await asyncio.sleep(0)  # queued, waiting for the next pipeline
        await first.close()
        assert await queued is True
    async with StoreLayer(StoresConfig(redis_url=redis_server.url)) as layer:
        [record] = await RedisStore(layer).records("acme", 0, CLOCK.time() + 10, 100)
    assert record["request_id"] == "closing" and record["cost_nusd"] == 300
