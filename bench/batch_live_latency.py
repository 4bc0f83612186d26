"""Live requests' latency while a large batch runs on the local engine (SmolLM2-135M-Instruct, in-process).

One gateway process (``provider: local``, a small engine: ``max_num_seqs`` sequences at once); this process
sends live chat requests one after the other and times each, in three conditions, one after the other:

- ``idle``: nothing else running;
- ``batch running``: a batch of ``--batch-lines`` lines (longer answers) runs meanwhile; the runner keeps twice
  as many lines in flight as the engine holds, and they go at the engine's lower priority (docs/batches.md);
- ``same load live``: the batch's lines sent instead as live requests, as many at once as the runner keeps in
  flight: the load the batch puts on the engine, at the live requests' own priority.

Prints p50 and p99 of the live requests' latency per condition.

    .venv/bin/python bench/batch_live_latency.py [--live 20] [--batch-lines 400] [--max-background-seqs 1|null]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.local_gateway_bench import KEY, process  # noqa: E402
from gateway.auth import hash_key  # noqa: E402
from tests.harness import free_port, serve_argv  # noqa: E402

ENGINE = "{{max_num_seqs: 4, kv_cache_gib: 0.05, max_model_len: 512, max_background_seqs: {background}}}"
IN_FLIGHT = 8  # batch lines the runner keeps in flight: the engine's window, 2 x max_num_seqs
LIVE_TOKENS, BATCH_TOKENS = 8, 48
DEADLINE_S = 900
_NONE = openai.types.BatchRequestCounts(total=0, completed=0, failed=0)


def config(files: str, engine: str) -> str:
    return f"""server: {{log_requests: false}}
files: {{dir: {files}}}
batches: {{poll_s: 0.2}}
models:
  - name: smollm2
    deployments:
      - {{provider: local, model: SmolLM2-135M-Instruct, engine: {engine}}}
tenants:
  - name: bench
    keys: ["{hash_key(KEY)}"]
"""


def body(i: int, max_tokens: int) -> dict[str, object]:
    return {
        "model": "smollm2",
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": f"Tell me about city number {i} and its river."}],
    }


async def live_latencies(url: str, count: int) -> list[float]:
    async with httpx.AsyncClient(timeout=300) as client:
        out = []
        for i in range(count):
            start = time.perf_counter()
            answer = await client.post(
                url + "/chat/completions",
                json=body(i, LIVE_TOKENS),
                headers={"Authorization": f"Bearer {KEY}"},
            )
            answer.raise_for_status()
            out.append(time.perf_counter() - start)
        return out


async def with_live_load(url: str, count: int, lines: int) -> list[float]:
    stop = asyncio.Event()

    async def background(client: httpx.AsyncClient, worker: int) -> None:
        i = worker
        while not stop.is_set() and i < lines:
            await client.post(
                url + "/chat/completions",
                json=body(1000 + i, BATCH_TOKENS),
                headers={"Authorization": f"Bearer {KEY}"},
            )
            i += IN_FLIGHT

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=IN_FLIGHT + 2)) as client:
        load = [asyncio.create_task(background(client, w)) for w in range(IN_FLIGHT)]
        await asyncio.sleep(2)  # the load is on the engine
        try:
            return await live_latencies(url, count)
        finally:
            stop.set()
            await asyncio.gather(*load, return_exceptions=True)


def with_batch(url: str, count: int, lines: int) -> list[float]:
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
    data = b"".join(
        orjson.dumps(
            {
                "custom_id": f"b{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body(1000 + i, BATCH_TOKENS),
            }
        )
        + b"\n"
        for i in range(lines)
    )
    file_id = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch").id
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + DEADLINE_S
    while (
        client.batches.retrieve(batch.id).request_counts or _NONE
    ).completed < IN_FLIGHT:  # the engine is full
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.2)
    try:
        latencies = asyncio.run(live_latencies(url, count))
        left = client.batches.retrieve(batch.id)
        assert left.status == "in_progress", (
            f"the batch ended while measuring ({left.status}): use more lines"
        )
        return latencies
    finally:
        client.batches.cancel(batch.id)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=20, help="live requests timed per condition")
    parser.add_argument("--batch-lines", type=int, default=400)
    parser.add_argument(
        "--max-background-seqs",
        default="0",
        help="the engine's setting: batch lines decoded per step beside a live request ('null': no limit)",
    )
    parser.add_argument("--no-live-load", action="store_true", help="skip the 'same load live' condition")
    args = parser.parse_args()
    engine = ENGINE.format(background=args.max_background_seqs)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config(str(Path(tmp) / "files"), engine))
        with process(
            serve_argv(str(path), str(port)),
            f"http://127.0.0.1:{port}/readyz",
            {},
        ):
            asyncio.run(live_latencies(url, 2))  # warm-up
            rows.append(("idle", asyncio.run(live_latencies(url, args.live))))
            rows.append(("batch running", with_batch(url, args.live, args.batch_lines)))
            if not args.no_live_load:
                rows.append(("same load live", asyncio.run(with_live_load(url, args.live, args.batch_lines))))
    print(
        f"SmolLM2-135M-Instruct in-process, engine {engine}; live: {LIVE_TOKENS} tokens out, one at a time; "
        f"load: {IN_FLIGHT} in flight, {BATCH_TOKENS} tokens out each"
    )
    print("| condition      | live requests | p50 ms | p99 ms | mean ms |")
    print("|----------------|--------------:|-------:|-------:|--------:|")
    for name, values in rows:
        print(
            f"| {name:<14} | {len(values):>13} | {percentile(values, 0.5) * 1000:>6.0f} | "
            f"{percentile(values, 0.99) * 1000:>6.0f} | {statistics.mean(values) * 1000:>7.0f} |"
        )


if __name__ == "__main__":
    main()
