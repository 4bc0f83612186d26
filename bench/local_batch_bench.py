"""The local engine's offline batch against the same prompts sent live: output tokens/s of each.

One gateway process (``python -m gateway serve``) with an in-process ``provider: local`` deployment; the same
prompts (greedy, EOS ignored, ``--max-tokens`` out each) go, one condition after the other:

- ``live``: as chat requests, ``--live-concurrency`` (32) at once, over HTTP;
- ``offline batch``: as one ``/v1/batches`` batch; the runner hands the engine a window of lines as large as it
  holds (``2 x max_num_seqs``, docs/batches.md), from batch creation to ``completed``.

Prints tokens/s, wall time, the engine's mean running sequences (``gateway_local_engine_running_sequences``
sampled from /metrics) and whether the batch's answers equal the live ones. Bounded: ``--lines`` prompts and
``--deadline-s`` per condition. On a shared machine compare within one run; ``--rounds`` alternates them.

    nice -n 10 .venv/bin/python bench/local_batch_bench.py [--model smollm2|tiny] [--lines 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.local_gateway_bench import KEY, WORDS, process  # noqa: E402
from gateway.auth import hash_key  # noqa: E402
from tests.harness import free_port, serve_argv  # noqa: E402

ALIAS = "m"
_RUNNING = "gateway_local_engine_running_sequences{"


def deployment(model: str, max_num_seqs: int, tmp: Path) -> str:
    if model == "tiny":
        from tests.local_engine.conftest import _build

        path = _build(tmp / "tiny", "llama")
        return (
            f"{{provider: local, model: tiny-llama, model_path: {path}, "
            f"engine: {{max_num_seqs: {max_num_seqs}, block_size: 4, num_kv_blocks: 4096}}}}"
        )
    return (
        "{provider: local, model: SmolLM2-135M-Instruct, "
        f"engine: {{max_num_seqs: {max_num_seqs}, kv_cache_gib: 0.25, max_model_len: 512}}}}"
    )


def config(files: str, deployment: str) -> str:
    return f"""server: {{log_requests: false}}
files: {{dir: {files}}}
batches: {{poll_s: 0.05}}
models:
  - name: {ALIAS}
    deployments:
      - {deployment}
tenants:
  - name: bench
    keys: ["{hash_key(KEY)}"]
"""


def body(i: int, max_tokens: int) -> dict[str, Any]:
    words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(8))
    return {
        "model": ALIAS,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": f"Question {i}: tell me about {words}."}],
    }


class RunningSampler:
    """Samples the engine's running sequences from /metrics every half second, in a thread."""

    def __init__(self, url: str) -> None:
        self.url, self.samples = url, list[float]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            text = httpx.get(self.url + "/metrics", timeout=10).text
            values = [
                float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(_RUNNING)
            ]
            if values:
                self.samples.append(sum(values))

    @property
    def mean(self) -> float:
        busy = [s for s in self.samples if s > 0]  # the start and the end of a condition are not its load
        return statistics.mean(busy) if busy else 0.0


async def live(url: str, lines: int, max_tokens: int, concurrency: int, deadline_s: float) -> dict[int, Any]:
    places = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 1)
    async with httpx.AsyncClient(timeout=deadline_s, limits=limits) as client:

        async def one(i: int) -> tuple[int, Any]:
            async with places:
                answer = await client.post(
                    url + "/v1/chat/completions",
                    json=body(i, max_tokens),
                    headers={"Authorization": f"Bearer {KEY}"},
                )
                answer.raise_for_status()
                return i, answer.json()

        return dict(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(lines))), deadline_s))


def offline(url: str, lines: int, max_tokens: int, deadline_s: float) -> tuple[dict[int, Any], float]:
    """The batch's answers by line, and the seconds from creating the batch to its completion."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    data = b"".join(
        orjson.dumps(
            {
                "custom_id": str(i),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body(i, max_tokens),
            }
        )
        + b"\n"
        for i in range(lines)
    )
    file_id = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch").id
    start = time.perf_counter()
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired"):
        if time.perf_counter() - start > deadline_s:
            client.batches.cancel(batch.id)
            raise RuntimeError(f"the batch did not finish in {deadline_s} s: {batch.request_counts}")
        time.sleep(0.05)
    wall = time.perf_counter() - start
    assert batch.status == "completed" and batch.output_file_id, batch
    out = client.files.content(batch.output_file_id).content
    answers = {int(row["custom_id"]): row["response"]["body"] for row in map(orjson.loads, out.splitlines())}
    assert len(answers) == lines, f"{len(answers)} answers of {lines}"
    return answers, wall


def tokens(answers: dict[int, Any]) -> int:
    return sum(a["usage"]["completion_tokens"] for a in answers.values())


def text(answers: dict[int, Any]) -> dict[int, str]:
    return {i: a["choices"][0]["message"]["content"] for i, a in answers.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--lines", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--live-concurrency", type=int, default=32)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--deadline-s", type=float, default=600)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, float, int, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(
            config(str(Path(tmp) / "files"), deployment(args.model, args.max_num_seqs, Path(tmp)))
        )
        with process(serve_argv(str(path), str(port)), url + "/readyz", {}):
            asyncio.run(live(url, 2, 4, 2, args.deadline_s))  # warm-up
            for _ in range(args.rounds):
                with RunningSampler(url) as sampler:
                    start = time.perf_counter()
                    answered = asyncio.run(
                        live(url, args.lines, args.max_tokens, args.live_concurrency, args.deadline_s)
                    )
                    wall = time.perf_counter() - start
                rows.append(
                    (f"live, {args.live_concurrency} at once", wall, tokens(answered), sampler.mean, "-")
                )
                with RunningSampler(url) as sampler:
                    batched, wall = offline(url, args.lines, args.max_tokens, args.deadline_s)
                equal = sum(text(batched)[i] == t for i, t in text(answered).items())
                rows.append(("offline batch", wall, tokens(batched), sampler.mean, f"{equal}/{args.lines}"))
    print(
        f"{args.model}, in-process, max_num_seqs {args.max_num_seqs}; {args.lines} prompts, "
        f"{args.max_tokens} tokens out each (greedy, EOS ignored)"
    )
    print("| condition          | seconds | tokens | tokens/s | mean running seqs | same answers as live |")
    print("|--------------------|--------:|-------:|---------:|------------------:|---------------------:|")
    for name, wall, count, running, same in rows:
        print(
            f"| {name:<18} | {wall:>7.1f} | {count:>6} | {count / wall:>8.1f} | {running:>17.1f} | {same:>20} |"
        )


if __name__ == "__main__":
    main()
