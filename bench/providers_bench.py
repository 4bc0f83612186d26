"""Gateway CPU per request by provider: the OpenAI-format pass-through vs the Anthropic, Gemini and Bedrock
translations (and /v1/messages in front of an OpenAI-format upstream), whole answers and streams.

The fake upstreams run in one process, the gateway (one worker) in another; this process drives each row
with an aiohttp client at a fixed concurrency for a few seconds and reads the gateway's CPU time from /proc.
CPU µs per request moves least with other load on a shared machine; requests/s and p50 are given too.

    .venv/bin/python bench/providers_bench.py [--seconds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.auth import hash_key  # noqa: E402
from tests.fakes import bedrock_upstream  # noqa: E402

KEY = "gw-bench-key"
UPSTREAM_KEY = "bench-upstream-key"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about the weather in a few words please"},
]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def serve_fakes(ports: list[int]) -> None:
    """Child process: the four fake upstreams until killed."""
    from tests.fakes import anthropic_upstream, gemini_upstream, openai_upstream
    from tests.fakes.openai_upstream import FakeState
    from tests.harness import ServerThread

    apps = [
        lambda: openai_upstream.build_app(FakeState(api_key=UPSTREAM_KEY, record=False)),
        lambda: anthropic_upstream.build_app(FakeState(api_key=UPSTREAM_KEY, record=False)),
        lambda: gemini_upstream.build_app(FakeState(api_key=UPSTREAM_KEY, record=False)),
        lambda: bedrock_upstream.build_app(FakeState(record=False)),
    ]
    servers = []
    for make, port in zip(apps, ports, strict=True):
        server = ServerThread(make)
        server.port = port
        servers.append(server.start())
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def config(ports: list[int], gateway_port: int) -> str:
    openai, anthropic, gemini, bedrock = (f"http://127.0.0.1:{p}" for p in ports)
    return f"""
server: {{port: {gateway_port}, log_requests: false}}
models:
  - name: openai
    deployments: [{{provider: openai-compatible, model: fake-model, api_base: "{openai}/v1", api_key: {UPSTREAM_KEY}}}]
  - name: anthropic
    deployments: [{{provider: anthropic, model: claude-3-5-haiku, api_base: "{anthropic}/v1", api_key: {UPSTREAM_KEY}}}]
  - name: gemini
    deployments: [{{provider: gemini, model: gemini-2.0-flash, api_base: "{gemini}/v1beta", api_key: {UPSTREAM_KEY}}}]
  - name: bedrock
    deployments: [{{provider: bedrock, model: "amazon.nova-lite-v1:0", api_base: "{bedrock}"}}]
tenants:
  - name: bench
    keys: ["{hash_key(KEY)}"]
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    url: str, path: str, body: dict[str, object], headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal failures
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with session.post(url + path, json=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies, failures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per row (default 3)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fakes", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fakes:
        serve_fakes(args.fakes)
        return 0
    from bench.processes import provider_gateway

    headers = {"Authorization": f"Bearer {KEY}"}
    with provider_gateway(
        config,
        "providers-bench-",
        ready=("/v1/chat/completions", {"model": "openai", "messages": MESSAGES}),
        headers=headers,
    ) as (url, gateway):
        print(f"{args.concurrency} concurrent, {args.seconds:g} s per row; gateway: 1 worker, logs off\n")
        print("| route | upstream | mode | req/s | p50 ms | gateway CPU µs/req | failed |")
        print("|---|---|---|---|---|---|---|")
        rows = [
            ("/v1/chat/completions", alias, stream, tools)
            for alias in ("openai", "anthropic", "gemini", "bedrock")
            for stream, tools in ((False, False), (True, False), (True, True))
        ]
        rows += [("/v1/messages", "openai", stream, False) for stream in (False, True)]
        for path, alias, stream, tools in rows:
            body: dict[str, object] = {"model": alias, "messages": MESSAGES, "stream": stream}
            if tools:
                body["tools"] = [TOOL]
            if path == "/v1/messages":
                body = {
                    "model": alias,
                    "max_tokens": 100,
                    "system": "Be brief.",
                    "messages": MESSAGES[1:],
                    "stream": stream,
                }
            before = cpu_seconds(gateway.pid)
            count, latencies, failed = asyncio.run(
                drive(url, path, body, headers, args.concurrency, args.seconds)
            )
            used = cpu_seconds(gateway.pid) - before
            mode = ("stream" if stream else "whole") + (" + tool call" if tools else "")
            print(
                f"| `{path}` | {alias} | {mode} | {count / args.seconds:.0f} | "
                f"{statistics.median(latencies) * 1000:.1f} | {used / max(count, 1) * 1e6:.0f} | {failed} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
