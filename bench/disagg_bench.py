"""Disaggregated prefill/decode against one aggregated engine, and the KV transports' cost per block.

Part 1 (``--itl``): 16 streams decode on a tiny random Llama (SmolLM2's tokenizer, 4k context) while
2,048-token prompts arrive; each mode runs its own worker processes behind the router on loopback:
``aggregated`` (one ``both`` worker: prefill chunks share its steps with the decodes) and
``disagg-shm`` / ``disagg-tcp`` (a prefill worker and a decode worker). The table gives the decode
inter-token latency (p50, p99, max) of the 16 streams and the long prompts' time to first token.

Part 2 (``--transfer``): 2,048 tokens of KV (128 blocks of 16) through each transport, per block:
*save* (prefill side: out of the cache into shared memory or a buffer) and *load* (decode side: map
or pull over loopback TCP, then into the decode cache), for the tiny model's cache and for a
SmolLM2-135M-shaped one (30 layers, 3 KV heads of 64).

Bounded: every mode runs for at most ``--duration`` seconds; run it niced (it is, by default).

    .venv/bin/python bench/disagg_bench.py            # both parts
    .venv/bin/python bench/disagg_bench.py --itl --duration 20 --long 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

import aiohttp
import torch
from aiohttp import web

from local_engine import resolve_model
from local_engine.disagg_router import DisaggRouter, build_router_app
from local_engine.kv_transfer import ShmConnector, TcpConnector, load_kv, scatter_kv

BLOCK = 16
PROMPT_LEN = 2048


def build_tiny(path: Path) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer and a 4,096-token context."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = resolve_model("smollm2")
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(path), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, path / name)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    def __init__(self, model: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [
                "nice",
                "-n",
                "10",
                sys.executable,
                "-m",
                "local_engine",
                "serve",
                "--model",
                str(model),
                "--port",
                str(self.port),
                "--block-size",
                str(BLOCK),
                "--kv-cache-gib",
                "0.25",
                *args,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait_up(self, session: aiohttp.ClientSession, deadline_s: float = 180) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                async with session.get(f"{self.url}/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"worker on {self.url} did not come up")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def _stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], stamps: list[float]
) -> None:
    async with session.post(f"{url}/v1/completions", json={**body, "stream": True}) as r:
        r.raise_for_status()
        async for raw in r.content:
            line = raw.strip()
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                stamps.append(time.perf_counter())


async def run_mode(model: Path, mode: str, duration: float, n_long: int, n_decode: int) -> dict[str, Any]:
    if mode == "aggregated":
        workers = {"both": Worker(model)}
    else:
        transport = mode.split("-")[1]
        workers = {
            "prefill": Worker(model, "--role", "prefill", "--kv-transport", transport),
            "decode": Worker(model, "--role", "decode"),
        }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=duration + 120)) as session:
        try:
            for w in workers.values():
                await w.wait_up(session)
            router = DisaggRouter(
                [workers["prefill"].url] if "prefill" in workers else [],
                [workers["decode"].url] if "decode" in workers else [],
                [workers["both"].url] if "both" in workers else [],
            )
            runner = web.AppRunner(build_router_app(router))
            await runner.setup()
            port = _free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            url = f"http://127.0.0.1:{port}"
            rng = random.Random(0)
            # Warm-up: one of each shape, so no first-call costs land in the figures.
            await _stream(session, url, {"prompt": [5] * 16, "max_tokens": 2, "ignore_eos": True}, [])
            await _stream(session, url, {"prompt": [7] * PROMPT_LEN, "max_tokens": 2, "ignore_eos": True}, [])
            decode_stamps: list[list[float]] = [[] for _ in range(n_decode)]
            start = time.perf_counter()
            decodes = [
                asyncio.create_task(
                    _stream(
                        session,
                        url,
                        {
                            "prompt": [rng.randrange(100, 40000) for _ in range(16)],
                            "temperature": 0,
                            "max_tokens": 100_000,
                            "ignore_eos": True,
                        },
                        decode_stamps[i],
                    )
                )
                for i in range(n_decode)
            ]
            ttfts: list[float] = []
            await asyncio.sleep(min(2.0, duration / 4))  # the decodes are under way
            gap = (duration - 4.0) / max(n_long, 1)
            for _ in range(n_long):
                stamps: list[float] = []
                t0 = time.perf_counter()
                await _stream(
                    session,
                    url,
                    {
                        "prompt": [rng.randrange(100, 40000) for _ in range(PROMPT_LEN)],
                        "temperature": 0,
                        "max_tokens": 4,
                        "ignore_eos": True,
                    },
                    stamps,
                )
                ttfts.append(stamps[0] - t0)
                await asyncio.sleep(max(0.0, t0 + gap - time.perf_counter()))
            end = time.perf_counter()
            for t in decodes:
                t.cancel()
            await asyncio.gather(*decodes, return_exceptions=True)
            await runner.cleanup()
        finally:
            for w in workers.values():
                w.stop()
    itl = [b - a for s in decode_stamps for a, b in itertools.pairwise(s) if start + 1.0 <= a and b <= end]
    itl.sort()
    return {
        "mode": mode,
        "itl_p50": itl[len(itl) // 2] * 1e3,
        "itl_p99": itl[int(len(itl) * 0.99)] * 1e3,
        "itl_max": itl[-1] * 1e3,
        "tokens": len(itl),
        "ttft": statistics.median(ttfts) * 1e3,
        "split": router.counts["disaggregated"],
    }


def _caches(layers: int, heads: int, dim: int, blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    shape = (blocks, BLOCK, heads, dim)
    return [(torch.randn(shape), torch.randn(shape)) for _ in range(layers)]


async def transfer(shape_name: str, layers: int, heads: int, dim: int, rounds: int) -> list[dict[str, Any]]:
    n = PROMPT_LEN // BLOCK
    caches = _caches(layers, heads, dim, n + 8)
    dest = _caches(layers, heads, dim, n + 8)  # the decode side's cache
    ids = list(range(n))
    rows = []
    for name, connector in (("shm", ShmConnector(ttl_s=60)), ("tcp", TcpConnector(ttl_s=60))):
        await connector.start()
        save_s, load_s = [], []
        for r in range(rounds):
            t0 = time.perf_counter()
            params = connector.save(f"bench-{r}", list(range(PROMPT_LEN)), caches, ids)
            t1 = time.perf_counter()
            loaded = await load_kv(params)
            scatter_kv(dest, ids, loaded.tensor)
            t2 = time.perf_counter()
            assert torch.equal(dest[-1][1][3], caches[-1][1][3])
            loaded.release()
            connector.sweep()
            save_s.append(t1 - t0)
            load_s.append(t2 - t1)
        await connector.close()
        nbytes = params["layout"]["shape"]
        per_block = 4 * layers * 2 * BLOCK * heads * dim
        save, load = statistics.median(save_s), statistics.median(load_s)
        rows.append(
            {
                "shape": shape_name,
                "transport": name,
                "blocks": n,
                "kib_per_block": per_block / 1024,
                "save_us": save / n * 1e6,
                "load_us": load / n * 1e6,
                "mb_s": per_block * n / (save + load) / 1e6,
                "shape_json": nbytes,
            }
        )
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--itl", action="store_true", help="only part 1")
    ap.add_argument("--transfer", action="store_true", help="only part 2")
    ap.add_argument("--duration", type=float, default=24.0, help="seconds per mode (bounded)")
    ap.add_argument("--long", type=int, default=4, help="2,048-token prompts per mode")
    ap.add_argument("--decodes", type=int, default=16)
    ap.add_argument("--modes", default="aggregated,disagg-shm,disagg-tcp")
    args = ap.parse_args()
    both = not (args.itl or args.transfer)
    torch.set_num_threads(1)  # as the workers run (OMP_NUM_THREADS=1): a shared machine's cores are few
    if args.transfer or both:
        rows = await transfer("tiny (2 layers, 2x32)", 2, 2, 32, 10)
        rows += await transfer("SmolLM2-135M (30 layers, 3x64)", 30, 3, 64, 5)
        print("\n| KV shape | transport | blocks | KiB/block | save µs/block | load µs/block | MB/s |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['shape']} | {r['transport']} | {r['blocks']} | {r['kib_per_block']:.0f} | "
                f"{r['save_us']:.1f} | {r['load_us']:.1f} | {r['mb_s']:.0f} |"
            )
    if args.itl or both:
        with tempfile.TemporaryDirectory() as tmp:
            model = build_tiny(Path(tmp) / "tiny")
            results = [
                await run_mode(model, m, args.duration, args.long, args.decodes)
                for m in args.modes.split(",")
            ]
        print(
            f"\n{args.decodes} streams decoding while {args.long} prompts of {PROMPT_LEN} tokens arrive "
            f"({args.duration:.0f} s per mode)\n"
        )
        print("| mode | decode ITL p50 ms | p99 ms | max ms | ITLs | long-prompt TTFT p50 ms | split |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {r['mode']} | {r['itl_p50']:.1f} | {r['itl_p99']:.1f} | {r['itl_max']:.1f} | {r['tokens']} | "
                f"{r['ttft']:.0f} | {r['split']} |"
            )


if __name__ == "__main__":
    os.nice(10)
    asyncio.run(main())
