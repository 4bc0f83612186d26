"""The fair queue: priority classes, weighted fair sharing between tenants, bounds, and clients that leave."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import httpx
import openai
import pytest

from policies.queue import FairQueue, QueueFull
from policies.stores.base import AdmitResult
from tests.conftest import KEY
from tests.policies.conftest import OTHER_KEY, SECOND_KEY, chat, key_id, sdk
from tests.wait import eventually, wait_for


class Capacity:
    """Shared capacity that frees one unit per tick: whoever the queue sends next gets it."""

    def __init__(self) -> None:
        self.free = 0
        self.order: list[str] = []

    def attempt(self, name: str):
        async def go() -> AdmitResult:
            if self.free > 0:
                self.free -= 1
                self.order.append(name)
                return AdmitResult("ok")
            return AdmitResult("slot")

        return go


async def _run(queue: FairQueue, capacity: Capacity, waiters: list[tuple[str, float, int, str]], ticks: int):
    refused = AdmitResult("slot")
    tasks = [
        asyncio.create_task(
            queue.wait(tenant, weight, priority, 30, capacity.attempt(name), refused, lambda r: None)
        )
        for tenant, weight, priority, name in waiters
    ]
    await asyncio.sleep(0.01)
    for _ in range(ticks):
        capacity.free += 1
        queue.slot_freed()
        await asyncio.sleep(0.005)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await queue.close()


async def test_a_flooding_tenant_does_not_starve_a_trickle():
    queue, capacity = FairQueue(1000, 500), Capacity()
    flood = [("flood", 1.0, 0, f"f{i}") for i in range(100)]
    trickle = [("trickle", 1.0, 0, f"t{i}") for i in range(3)]
    await _run(queue, capacity, flood + trickle, ticks=6)
    # the trickle's three arrived after a hundred of the flood's, yet they alternate
    assert sorted(capacity.order) == sorted(["f0", "f1", "f2", "t0", "t1", "t2"])


async def test_weights_share_contended_capacity():
    queue, capacity = FairQueue(1000, 500), Capacity()
    waiters = [("heavy", 3.0, 0, f"h{i}") for i in range(50)] + [
        ("light", 1.0, 0, f"l{i}") for i in range(50)
    ]
    await _run(queue, capacity, waiters, ticks=40)
    heavy = sum(1 for name in capacity.order if name.startswith("h"))
    assert 28 <= heavy <= 32  # 3:1 of 40


async def test_interactive_goes_before_batch():
    queue, capacity = FairQueue(1000, 500), Capacity()
    waiters = [
        ("a", 1.0, 1, "batch1"),
        ("a", 1.0, 1, "batch2"),
        ("b", 1.0, 0, "inter1"),
        ("a", 1.0, 0, "inter2"),
    ]
    await _run(queue, capacity, waiters, ticks=4)
    assert capacity.order[:2] == ["inter1", "inter2"] or capacity.order[:2] == ["inter2", "inter1"]
    assert capacity.order[2:] == ["batch1", "batch2"]


async def test_queue_is_bounded_per_tenant_and_in_all():
    queue, capacity = FairQueue(3, 2), Capacity()
    refused = AdmitResult("slot")
    tasks = [
        asyncio.create_task(queue.wait("a", 1, 0, 5, capacity.attempt("a"), refused, lambda r: None))
        for _ in range(2)
    ]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await queue.wait("a", 1, 0, 5, capacity.attempt("a"), refused, lambda r: None)
    tasks.append(
        asyncio.create_task(queue.wait("b", 1, 0, 5, capacity.attempt("b"), refused, lambda r: None))
    )
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await queue.wait("c", 1, 0, 5, capacity.attempt("c"), refused, lambda r: None)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert queue.size == 0
    await queue.close()


async def test_an_admission_answered_after_the_wait_ran_out_is_the_waiters() -> None:
    # The store admits (takes the bucket's token, writes the ledger reservation) in a round trip that was
    # sent before the waiter's time ran out and answers after it. The waiter must get that admission: had it
    # left with a 429, the admission would be given back as a record of a request that never ran (the extra
    # ledger record seen in tests/policies/test_processes.py).
    queue = FairQueue(10, 10)
    loop = asyncio.get_running_loop()
    max_wait_s = 0.05
    sent: list[float] = []
    given_back: list[AdmitResult] = []

    async def slow_store() -> AdmitResult:
        sent.append(loop.time())
        deadline = registered + max_wait_s
        await asyncio.sleep(
            deadline - loop.time() + 0.05
        )  # answers after the waiter's deadline, whatever the load
        return AdmitResult("ok")

    registered = loop.time()
    result = await queue.wait("a", 1, 0, max_wait_s, slow_store, AdmitResult("slot"), given_back.append)
    assert sent and sent[0] < registered + max_wait_s  # the attempt was under way before the time ran out
    assert loop.time() > registered + max_wait_s  # and answered after it
    assert result.outcome == "ok" and not given_back
    assert queue.size == 0
    await queue.close()


async def test_a_refusal_answered_after_the_wait_ran_out_refuses() -> None:
    queue = FairQueue(10, 10)
    loop = asyncio.get_running_loop()
    registered = loop.time()

    async def slow_refusal() -> AdmitResult:
        await asyncio.sleep(registered + 0.1 - loop.time())
        return AdmitResult("bucket", index=0, retry_after=7.0)

    result = await queue.wait(
        "a", 1, 0, 0.05, slow_refusal, AdmitResult("bucket", index=0, retry_after=0.0), lambda r: None
    )
    assert (result.outcome, result.retry_after) == ("bucket", 7.0)  # the store's latest answer, not the first
    assert queue.size == 0
    await queue.close()


async def test_a_higher_class_arriving_during_an_attempt_keeps_its_place() -> None:
    # A batch waiter's store round trip is under way when an interactive one arrives and goes to the head of
    # the tenant's heap: the admitted batch waiter must leave the heap, not the interactive one at its head.
    queue = FairQueue(10, 10)
    gate = asyncio.Event()
    tried: list[str] = []

    def attempt(name: str) -> Callable[[], Awaitable[AdmitResult]]:
        async def go() -> AdmitResult:
            tried.append(name)
            if name == "batch":
                await gate.wait()
            return AdmitResult("ok")

        return go

    batch = asyncio.create_task(
        queue.wait("a", 1, 1, 30, attempt("batch"), AdmitResult("slot"), lambda r: None)
    )
    await eventually(lambda: tried == ["batch"], what="the batch waiter's attempt under way")
    interactive = asyncio.create_task(
        queue.wait("a", 1, 0, 30, attempt("interactive"), AdmitResult("slot"), lambda r: None)
    )
    await eventually(lambda: queue.size == 2, what="the interactive waiter queued")
    gate.set()
    assert (await asyncio.wait_for(batch, 10)).outcome == "ok"
    assert (await asyncio.wait_for(interactive, 10)).outcome == "ok"
    assert tried == ["batch", "interactive"] and queue.size == 0
    await queue.close()


def _queue_depth(url: str) -> float:
    line = next(
        x for x in httpx.get(url + "/metrics").text.splitlines() if x.startswith("gateway_queue_depth")
    )
    return float(line.rsplit(" ", 1)[1])


def test_a_client_that_disconnects_while_queued_leaves_the_queue(policy_gateway):
    server = policy_gateway(acme="    limits: {rpm: 6, rpm_burst: 1}\n    max_wait_s: 20")
    with sdk(server) as client:
        chat(client)
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=0.5,
        )
    deadline = time.monotonic() + 5
    while _queue_depth(server.url) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _queue_depth(server.url) == 0


def test_a_flood_of_one_tenant_leaves_another_tenant_untouched(policy_gateway):
    server = policy_gateway(
        acme="    limits: {rpm: 60, rpm_burst: 1}\n    max_wait_s: 10",
        policies="  queue: {max_per_tenant: 5}",
    )
    outcomes: list[str] = []

    def flood() -> None:
        with sdk(server, timeout=30) as client:
            try:
                chat(client)
                outcomes.append("ok")
            except openai.RateLimitError:
                outcomes.append("429")

    threads = [threading.Thread(target=flood) for _ in range(12)]
    for thread in threads:
        thread.start()
    # the flood fills acme's queue to its bound and never past it; read once per poll, since the bucket
    # lets one waiter go each second, a second read may already see one fewer
    depths = [_queue_depth(server.url)]
    deadline = time.monotonic() + 30
    while depths[-1] < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
        depths.append(_queue_depth(server.url))
    assert max(depths) == 5
    with sdk(server, OTHER_KEY) as other:
        assert chat(other).parse().choices
    # answered while acme's flood still waits (its bucket frees one slot a second): not queued behind it
    assert _queue_depth(server.url) > 0
    for thread in threads:
        thread.join(30)
    # burst 1 + at most 5 waiting; the rest were refused at once instead of queueing without bound
    assert outcomes.count("429") >= 6


def _finish_order(server, requests):
    """Sends (name, key, headers) one after another, each once the one before is waiting in the queue, each
    in its own thread; returns the names in the order their answers came."""
    done: list[str] = []

    def send(name: str, key: str, headers: dict[str, str]) -> None:
        with sdk(server, key) as client:
            chat(client, extra_headers=headers)
            done.append(name)

    threads = []
    for name, key, headers in requests:
        thread = threading.Thread(target=send, args=(name, key, headers))
        thread.start()
        threads.append(thread)
        wait_for(lambda: _queue_depth(server.url) >= len(threads), what=f"{name} waiting in the queue")
    for thread in threads:
        thread.join(20)
    return done


def test_interactive_requests_leave_the_queue_before_batch_ones(policy_gateway):
    from policies.admission import PRIORITY_HEADER

    server = policy_gateway(acme="    limits: {rpm: 20, rpm_burst: 1}\n    max_wait_s: 10")
    with sdk(server) as client:
        chat(client)  # empties the bucket: each next request waits for a refill (3 s)
    order = _finish_order(server, [("batch", KEY, {PRIORITY_HEADER: "batch"}), ("interactive", KEY, {})])
    assert order == ["interactive", "batch"]


def test_a_batch_key_cannot_raise_its_class_by_header(policy_gateway):
    from policies.admission import PRIORITY_HEADER

    server = policy_gateway(
        acme=f"""    limits: {{rpm: 20, rpm_burst: 1}}
    max_wait_s: 10
    per_key:
      {key_id(SECOND_KEY)}: {{priority: batch}}"""
    )
    with sdk(server) as client:
        chat(client)
    order = _finish_order(
        server, [("batch-key", SECOND_KEY, {PRIORITY_HEADER: "interactive"}), ("interactive-key", KEY, {})]
    )
    assert order == ["interactive-key", "batch-key"]


def test_a_request_queued_behind_another_waits_max_wait_s_once(policy_gateway):
    """acme: one request every 3 s, max_wait_s 3.5. B waits for the refill after A; C arrives while B waits,
    queues behind it, and when its second of waiting is up it is refused, not sent to wait a second time.
    Timed by the gateway's own log line (from the request's arrival), not by the loaded test machine."""
    from tests.conftest import log_line

    server = policy_gateway(acme="    limits: {rpm: 20, rpm_burst: 1}\n    max_wait_s: 3.5")
    with sdk(server) as client:
        chat(client)  # A: the bucket is empty now
    statuses: dict[str, int] = {}

    def send(name: str) -> None:
        response = httpx.post(
            server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}", "x-request-id": f"{name}-{id(statuses)}"},
            json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        )
        statuses[name] = response.status_code

    b = threading.Thread(target=send, args=("B",))
    b.start()
    deadline = time.monotonic() + 5
    while _queue_depth(server.url) < 1:  # B is waiting
        assert time.monotonic() < deadline
        time.sleep(0.01)
    send("C")
    b.join(10)
    assert statuses["B"] == 200
    line = log_line(f"C-{id(statuses)}")
    # the next refill after B's is 6 s after A: C cannot have it within its 3.5 s
    assert statuses["C"] == 429 and 3400 <= line["latency_ms"] <= 3600, line  # to within 100 ms
