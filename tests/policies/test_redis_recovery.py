"""Redis going away and coming back, through the gateway: no late 503s, no lost or doubled ledger records."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from gateway.keys import GATEWAY
from tests.conftest import KEY
from tests.policies.conftest import ADMIN_KEY, policy_config


def _chat(url: str, request_id: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        timeout=10,
        headers={"Authorization": f"Bearer {KEY}", "x-request-id": request_id},
        json={"model": "chat", "messages": [{"role": "user", "content": request_id}]},
    )


def _ledger(url: str) -> list[str]:
    answer = httpx.get(
        url + "/admin/usage",
        params={"tenant": "acme", "group_by": "request"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return [r["request_id"] for r in answer.json()["data"]]


def _gateway(upstream, start_gateway, redis, mode: str):
    # retry_redis_after_s is long on purpose: recovery must not wait it out after Redis refused a connection.
    stores = f"  redis_url: {redis.url}\n  on_redis_error: {mode}\n  retry_redis_after_s: 30\n  redis_timeout_s: 0.5"
    return start_gateway(policy_config(upstream[0].url, acme="    limits: {rpm: 100000}", stores=stores))


def _together(url: str, names: list[str]) -> list[int]:
    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(lambda name: _chat(url, name).status_code, names))


def test_fail_closed_serves_the_first_request_after_redis_is_back(upstream, start_gateway, own_redis):
    gateway = _gateway(upstream, start_gateway, own_redis, "fail_closed")
    assert (
        _together(gateway.url, [f"before-{i}" for i in range(16)]) == [200] * 16
    )  # several pooled connections
    own_redis.stop()
    for i in range(3):
        response = _chat(gateway.url, f"down-{i}")
        assert response.status_code == 503 and response.headers["Retry-After"]
    own_redis.start()  # a new redis-server: the pooled connections left idle are stale
    assert _chat(gateway.url, "after").status_code == 200  # the first request that can reach it
    after = [f"after-{i}" for i in range(16)]
    assert _together(gateway.url, after) == [200] * 16  # stale connections: sent again on fresh ones
    assert set(_ledger(gateway.url)) == {"after", *after}  # (a new, empty Redis)


def test_fail_open_replays_the_outage_into_the_shared_ledger_once(upstream, start_gateway, own_redis):
    """Served from memory during the outage, every record reaches Redis's ledger once Redis is back; every
    request after the restart goes to Redis at once; none is doubled (a second replay changes nothing)."""
    gateway = _gateway(upstream, start_gateway, own_redis, "fail_open")
    own_redis.stop()
    during = [f"during-{i}" for i in range(20)]
    assert [_chat(gateway.url, r).status_code for r in during] == [200] * 20  # admitted from process memory
    own_redis.start()
    after = [f"after-{i}" for i in range(20)]
    assert [_chat(gateway.url, r).status_code for r in after] == [200] * 20
    deadline = time.monotonic() + 10
    while True:
        ledger = _ledger(gateway.url)
        if set(ledger) >= set(during) | set(after):
            break
        assert time.monotonic() < deadline, sorted(set(during) | set(after) - set(ledger))
        time.sleep(0.1)
    assert sorted(ledger) == sorted(during + after)  # nothing doubled, nothing else
    admission = gateway.app[GATEWAY].pipeline.admission
    for _ in range(2):  # two more sweeps, each of which replays what it still holds: nothing is written twice
        asyncio.run_coroutine_threadsafe(admission.sweep(), gateway.loop).result(timeout=30)
    assert sorted(_ledger(gateway.url)) == sorted(during + after)


def test_fail_open_answers_a_lookup_it_cannot_make_with_503_not_404(upstream, start_gateway, own_redis):
    """While Redis is away a fail-open gateway reads from its own memory, where a batch, file or stored
    response that another replica (or this one, before the outage) wrote is absent: a lookup that finds
    nothing there says "try again" (503, Retry-After: the SDKs retry it), never "it does not exist" (404: a
    client polling its batch or fine-tuning job would give it up), and a listing says 503 rather than list
    this process's part. With Redis back, an unknown id is a 404 and listings are whole again."""
    gateway = _gateway(upstream, start_gateway, own_redis, "fail_open")
    headers = {"Authorization": f"Bearer {KEY}"}
    paths = ["/v1/batches/batch_abc", "/v1/files/file-abc", "/v1/responses/resp_abc"]
    listings = ["/v1/batches", "/v1/files", "/v1/messages/batches"]  # from memory they would be partial

    def statuses(of: list[str]) -> list[int]:
        return [httpx.get(gateway.url + p, headers=headers, timeout=10).status_code for p in of]

    assert statuses(paths) == [404] * 3 and statuses(listings) == [200] * 3
    own_redis.stop()
    assert _chat(gateway.url, "during").status_code == 200  # fail open: requests go on from memory
    for path in paths + listings:
        answer = httpx.get(gateway.url + path, headers=headers, timeout=10)
        assert answer.status_code == 503, (path, answer.text)
        assert answer.headers["Retry-After"] and "unreachable" in answer.text
    own_redis.start()
    deadline = time.monotonic() + 10
    while (status := statuses(paths[:1])[0]) != 404:
        assert status == 503 and time.monotonic() < deadline, status  # until the probe finds Redis again
        time.sleep(0.05)
    assert statuses(paths) == [404] * 3 and statuses(listings) == [200] * 3
