"""Under load: 10,000 failing requests leave the gateway's memory flat and its worker alive; an upstream
killed mid-load and restarted is taken back without anyone touching the gateway."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from tests.conftest import KEY
from tests.fakes.chaos_upstream import Fault
from tests.gateway.test_server import start_serve_with
from tests.harness import free_port
from tests.resilience.conftest import alias, config, dep

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["status-500", "status-429", "reset", "bad-json", "wrong-type", "error-200"]
FAULTS = [
    Fault("status", status=500),
    Fault("status", status=429, retry_after="0"),
    Fault("reset"),
    Fault("bad_json"),
    Fault("wrong_content_type"),
    Fault("error_body_200"),
]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _load(url: str, requests: int, concurrency: int, aliases: list[str]) -> dict[int, int]:
    """Sends ``requests`` (one in four a stream), checks that each answer is a success or a clean OpenAI
    error, and counts them by status."""
    statuses: dict[int, int] = {}
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:

        async def worker() -> None:
            for i in counter:
                stream = i % 4 == 0
                body = {
                    "model": aliases[i % len(aliases)],
                    "stream": stream,
                    "messages": [{"role": "user", "content": f"request {i}"}],
                }
                async with session.post(url + "/v1/chat/completions", json=body) as response:
                    raw = await response.read()
                    status = response.status
                if status != 200:
                    error = orjson.loads(raw)["error"]
                    assert error["message"] and error["type"], raw
                elif stream:
                    assert raw.endswith(b"data: [DONE]\n\n") or b'"error"' in raw, raw[-200:]
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return statuses


async def test_memory_stays_flat_over_10000_failing_requests(chaos, tmp_path):
    url = chaos[0].url
    for model, fault in zip(MODELS, FAULTS, strict=True):
        chaos[1].faults[model] = fault
    aliases = [alias(f"fails-{m}", dep(url, m), retry={"attempts": 2, "backoff_base_s": 0}) for m in MODELS]
    path = tmp_path / "config.yaml"
    # breakers off: every request reaches the failing upstream (an open breaker would answer without it)
    path.write_text(
        config(*aliases, resilience={"breaker": {"enabled": False}}).replace(
            "log_requests: true", "log_requests: false"
        )
    )
    process, gateway_url = start_serve_with(path, {}, workers=1)
    try:
        names = [f"fails-{m}" for m in MODELS]
        await _load(gateway_url, 1_000, 32, names)  # warm-up: pools, buffers, caches filled
        before = _rss_kib(process.pid)
        started = time.monotonic()
        statuses = await _load(gateway_url, 10_000, 32, names)
        elapsed = time.monotonic() - started
        after = _rss_kib(process.pid)
        assert process.poll() is None  # the worker never died
        assert sum(statuses.values()) == 10_000 and 200 not in statuses
        assert set(statuses) <= {429, 500, 502}, statuses
        assert sum(chaos[1].requests[m] for m in MODELS) > 11_000  # they reached the upstream, and retried
        growth_mib = (after - before) / 1024
        print(
            f"10,000 failing requests in {elapsed:.1f} s; RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB"
        )
        # bounded, not zero: the request log (on by default) fills SQLite's page cache and WAL as it writes
        assert growth_mib < 12, f"RSS grew {growth_mib:.1f} MiB"
        async with aiohttp.ClientSession() as session, session.get(gateway_url + "/healthz") as response:
            assert response.status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def _start_upstream(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.chaos_upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "chaos upstream did not start"
            time.sleep(0.05)


async def test_the_gateway_recovers_by_itself_when_the_upstream_is_killed_and_restarted(start_gateway):
    port = free_port()
    upstream = _start_upstream(port)
    gateway = start_gateway(
        config(
            alias(
                "chat",
                dep(f"http://127.0.0.1:{port}", "m", timeouts={"connect_s": 0.5}),
                retry={"attempts": 2},
            ),
            resilience={"breaker": {"failures": 5, "cooldown_s": 0.5}},
        )
    )
    timeline: list[tuple[float, float, int]] = []  # (sent, answered, status)
    deadline = time.monotonic() + 60

    def recovered_enough() -> bool:  # 20 answers to requests sent well after the restart, or the deadline
        if time.monotonic() > deadline:
            return True
        return restarted[0] > 0 and sum(1 for sent, _, _ in timeline if sent > restarted[0] + 1.5) >= 20

    try:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {KEY}"}, timeout=aiohttp.ClientTimeout(total=10)
        ) as session:

            async def worker() -> None:
                while not recovered_enough():
                    sent = time.monotonic()
                    async with session.post(
                        gateway.url + "/v1/chat/completions",
                        json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
                    ) as r:
                        raw = await r.read()
                    if r.status != 200:
                        assert orjson.loads(raw)["error"]["type"], raw
                    timeline.append((sent, time.monotonic(), r.status))
                    await asyncio.sleep(0.005)

            async def chaos_monkey() -> None:
                nonlocal upstream
                await asyncio.sleep(1.5)
                killing[0] = time.monotonic()
                upstream.kill()  # SIGKILL mid-load: connections die, the port goes dark
                upstream.wait()
                killed[0] = time.monotonic()
                await asyncio.sleep(2)
                restarting[0] = time.monotonic()
                upstream = await asyncio.to_thread(_start_upstream, port)
                restarted[0] = time.monotonic()

            killing, killed, restarting, restarted = [0.0], [0.0], [0.0], [0.0]
            await asyncio.gather(chaos_monkey(), *[worker() for _ in range(4)])
    finally:
        upstream.kill()
        upstream.wait()
    # Each request by when it was sent and answered, not by luck of timing: on a loaded machine an answer from
    # before the kill can reach the client well after it.
    before = [s for _, answered, s in timeline if answered < killing[0]]
    during = [
        s for sent, answered, s in timeline if sent > killed[0] and answered < restarting[0]
    ]  # port dark
    after = [s for sent, _, s in timeline if sent > restarted[0] + 1.5]
    assert before and set(before) == {200}
    assert during and 200 not in during and set(during) <= {502, 503}, set(during)
    assert len(after) >= 20 and set(after) == {200}, after  # recovered, nobody restarted the gateway
    assert 500 not in {s for _, _, s in timeline}
