"""The bundled engine behind the gateway: what the gateway adds, in-process and over HTTP.

    python bench/local_gateway_bench.py                  # 1 and 8 concurrent streams, 32 tokens out
    python bench/local_gateway_bench.py --concurrency 1,8,32 --max-tokens 64
    python bench/local_gateway_bench.py --systems in-process,engine --concurrency 1

Three systems, each a fresh process (or two) serving SmolLM2-135M-Instruct with the same engine
settings, measured one after the other with the same streaming chat requests (greedy, EOS ignored):

- ``engine server``: ``python -m local_engine serve``, no gateway;
- ``gateway in-process``: ``python -m gateway serve`` with a ``provider: local`` deployment;
- ``gateway -> engine server``: the gateway with ``provider: local`` and ``api_base`` at an engine server.

Prints output tokens/s, mean time to first token and mean inter-token latency per concurrency,
as the client sees them. On a shared machine compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.auth import hash_key  # noqa: E402
from tests.harness import free_port, serve_argv  # noqa: E402

KEY = "gw-bench-key"
ENGINE = {"max_num_seqs": 32, "kv_cache_gib": 0.25}
WORDS = (
    "river mountain city history engine market garden winter summer music science library ocean forest "
    "village bridge station harbor castle island desert valley storm light memory language journey"
).split()


@contextmanager
def process(args: list[str], ready_url: str, env: dict[str, str]) -> Iterator[None]:
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[2]} exited with {proc.returncode}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready_url} not ready in 180 s")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@contextmanager
def engine_server() -> Iterator[str]:
    port = free_port()
    with process(
        [
            sys.executable,
            "-m",
            "local_engine",
            "serve",
            "--model",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-num-seqs",
            str(ENGINE["max_num_seqs"]),
            "--kv-cache-gib",
            str(ENGINE["kv_cache_gib"]),
        ],
        f"http://127.0.0.1:{port}/health",
        {},
    ):
        yield f"http://127.0.0.1:{port}/v1"


@contextmanager
def gateway(deployment: str) -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(f"""server: {{log_requests: false}}
models:
  - name: smollm2
    deployments:
      - {deployment}
tenants:
  - name: bench
    keys: ["{hash_key(KEY)}"]
""")
        with process(
            serve_argv(str(config), str(port)),
            f"http://127.0.0.1:{port}/readyz",
            {},
        ):
            yield f"http://127.0.0.1:{port}/v1"


def prompt(rng: random.Random, words: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(words))}]


async def one(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, list[float], int]:
    body = {
        "model": "smollm2",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async with client.stream(
        "POST", url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = orjson.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
    return arrivals[0] - start, [b - a for a, b in itertools.pairwise(arrivals)], tokens


async def measure(url: str, concurrency: int, max_tokens: int, words: int) -> tuple[float, float, float]:
    rng = random.Random(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 1)) as client:
        await one(client, url, prompt(rng, words), 4)  # warm-up
        start = time.perf_counter()
        results = await asyncio.gather(
            *(one(client, url, prompt(rng, words), max_tokens) for _ in range(concurrency))
        )
        wall = time.perf_counter() - start
    tokens = sum(r[2] for r in results)
    ttft = statistics.mean(r[0] for r in results)
    gaps = [g for r in results for g in r[1]]
    return tokens / wall, ttft * 1000, statistics.mean(gaps) * 1000 if gaps else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,8", help="comma-separated")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--prompt-words", type=int, default=96, help="about 1.3 tokens each with the chat template"
    )
    ap.add_argument(
        "--systems",
        default="engine,http,in-process",
        help="which, in this order: engine (server alone), http (gateway -> engine server), in-process",
    )
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    engine = "{" + ", ".join(f"{k}: {v}" for k, v in ENGINE.items()) + "}"
    rows: list[tuple[str, int, tuple[float, float, float]]] = []

    def run(name: str, url: str) -> None:
        for c in levels:
            rows.append((name, c, asyncio.run(measure(url, c, args.max_tokens, args.prompt_words))))

    for system in args.systems.split(","):
        if system == "in-process":
            with gateway(f"{{provider: local, model: SmolLM2-135M-Instruct, engine: {engine}}}") as gw:
                run("gateway in-process", gw)
            continue
        with engine_server() as url:
            if system == "engine":
                run("engine server", url)
            else:
                with gateway(f"{{provider: local, model: SmolLM2-135M-Instruct, api_base: '{url}'}}") as gw:
                    run("gateway -> engine server", gw)

    print(
        f"SmolLM2-135M-Instruct, {args.prompt_words} words in, {args.max_tokens} tokens out, greedy, EOS ignored"
    )
    print("| system                    | concurrent | output tok/s | TTFT ms | ITL ms |")
    print("|---------------------------|------------|--------------|---------|--------|")
    for name, c, (tps, ttft, itl) in rows:
        print(f"| {name:<25} | {c:>10} | {tps:>12.1f} | {ttft:>7.0f} | {itl:>6.1f} |")


if __name__ == "__main__":
    main()
