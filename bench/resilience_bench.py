"""Resilience on vs off through an upstream that fails a share of requests (30% by default): success rate
and p50/p99 latency seen by clients; and what the resilience layer costs a request that succeeds at once.

    python bench/resilience_bench.py                      # 3,000 requests per row, 32 concurrent
    python bench/resilience_bench.py --requests 5000 --fail-rate 0.3 --latency-ms 5

The fake upstream (tests/fakes/chaos_upstream.py) and the gateway run as their own processes on
127.0.0.1; the load generator is this process. They share this machine's cores: compare the rows of one
run with each other, not with another run's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends import Backend, DeploymentConfig, Endpoint, UpstreamResponse  # noqa: E402
from gateway.auth import hash_key  # noqa: E402
from policies.call import Call  # noqa: E402
from policies.record import RequestRecord  # noqa: E402
from policies.resilience import Resilience  # noqa: E402
from policies.router import Route, Router  # noqa: E402

KEY = "gw-bench-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"process {process.args!r} did not start") from None
            time.sleep(0.05)


def _config(upstream: int, resilience: str, alias_extra: str) -> str:
    return f"""
server: {{log_requests: false}}
resilience: {resilience}
models:
  - name: chat
    deployments:
      - {{provider: openai-compatible, model: m, api_base: "http://127.0.0.1:{upstream}/v1", api_key: k}}
{alias_extra}
tenants:
  - {{name: bench, keys: ["{hash_key(KEY)}"]}}
"""


ROWS = {
    "off (1 attempt, no breaker)": ("{breaker: {enabled: false}}", "    retry: {attempts: 1}"),
    "on, defaults (3 attempts, budget 20%)": ("{}", ""),
    "on, budget 50%": ("{}", "    retry: {budget_ratio: 0.5}"),
}


async def _load(url: str, requests: int, concurrency: int) -> tuple[int, list[float]]:
    ok = 0
    latencies: list[float] = []
    counter = iter(range(requests))
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"Authorization": f"Bearer {KEY}"}
    ) as session:

        async def worker() -> None:
            nonlocal ok
            for _ in counter:
                started = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", json=body) as response:
                    await response.read()
                    ok += response.status == 200
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return ok, latencies


def _row(name: str, config: str, args: argparse.Namespace, upstream_port: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config)
    port = _free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", f.name, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, gateway)
        url = f"http://127.0.0.1:{port}"
        asyncio.run(_load(url, 200, args.concurrency))  # warm-up
        started = time.monotonic()
        ok, latencies = asyncio.run(_load(url, args.requests, args.concurrency))
        elapsed = time.monotonic() - started
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        os.unlink(f.name)
    latencies.sort()
    return {
        "name": name,
        "success": ok / args.requests,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rps": args.requests / elapsed,
    }


class _Instant(Backend):
    """Answers at once, without I/O: what is left to time is the layer in front of it."""

    def __init__(self) -> None:
        self.id = "instant"
        self._answer = UpstreamResponse(status=200, body=b"{}", data={})

    @asynccontextmanager
    async def send(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        yield self._answer


@asynccontextmanager
async def _single_attempt(backend: Backend, call: Call) -> AsyncIterator[UpstreamResponse]:
    """The single-attempt version this layer replaced (one pick, one attempt, the record filled in)."""
    record = call.record
    record.deployment = backend.id
    sent = time.perf_counter()
    async with backend.send(call.endpoint, call.body, stream=call.stream) as upstream:
        record.upstream_s = time.perf_counter() - sent
        record.attempts.append(f"{backend.id}:{upstream.status}")
        yield upstream


async def _hot_path(n: int) -> tuple[float, float, float]:
    """Microseconds per request: the backend alone, the single-attempt version, and Resilience.send
    (the first attempt succeeds); best of 10 rounds, interleaved."""
    backend = _Instant()
    deployment = DeploymentConfig(provider="openai-compatible", model="m", api_base="http://127.0.0.1:1/v1")
    router = Router({"chat": [Route.of("chat", deployment, backend)]}, {})
    resilience = Resilience(router)
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}

    def call() -> Call:
        return Call(
            record=RequestRecord(request_id="r", started=0.0, endpoint="/v1/chat/completions"),
            tenant="t",
            key_id="k",
            alias="chat",
            endpoint=Endpoint.CHAT,
            body=dict(body),
            stream=False,
        )

    best_direct = best_single = best_layer = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        for _ in range(n):
            c = call()
            async with backend.send(c.endpoint, c.body, stream=False):
                pass
            await asyncio.sleep(0)  # as a real request does: the loop runs (and drops cancelled timers)
        best_direct = min(best_direct, (time.perf_counter() - started) / n * 1e6)
        started = time.perf_counter()
        for _ in range(n):
            async with _single_attempt(backend, call()):
                pass
            await asyncio.sleep(0)
        best_single = min(best_single, (time.perf_counter() - started) / n * 1e6)
        started = time.perf_counter()
        for _ in range(n):
            async with resilience.send(call()):
                pass
            await asyncio.sleep(0)
        best_layer = min(best_layer, (time.perf_counter() - started) / n * 1e6)
    return best_direct, best_single, best_layer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fail-rate", type=float, default=0.3)
    parser.add_argument("--latency-ms", type=float, default=5.0, help="the upstream's own latency")
    args = parser.parse_args()

    upstream_port = _free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.chaos_upstream",
            "--port",
            str(upstream_port),
            "--fault",
            "status",
            "--status",
            "500",
            "--rate",
            str(args.fail_rate),
            "--latency-ms",
            str(args.latency_ms),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(upstream_port, upstream)
        results = [
            _row(name, _config(upstream_port, resilience, extra), args, upstream_port)
            for name, (resilience, extra) in ROWS.items()
        ]
    finally:
        upstream.terminate()
        upstream.wait(timeout=30)

    print(
        f"\nUpstream failing {args.fail_rate:.0%} of requests with HTTP 500 "
        f"({args.latency_ms:g} ms latency); {args.requests} requests, {args.concurrency} concurrent\n"
    )
    print("| resilience | success | p50 ms | p99 ms | req/s |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {r['success']:.1%} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.0f} |")

    direct, single, layer = asyncio.run(_hot_path(20_000))
    print("\nA request that succeeds at once, in process (best of 10 x 20,000):\n")
    print("| path | µs per request |")
    print("|---|---:|")
    print(f"| backend.send alone | {direct:.2f} |")
    print(f"| single-attempt version (pick, send, record) | {single:.2f} |")
    print(f"| Resilience.send (routing, breaker, budget, deadline) | {layer:.2f} |")
    print(f"| added over the single-attempt version | {layer - single:.2f} |")


if __name__ == "__main__":
    main()
