"""The local engine's offline batch against the same prompts sent live: output tokens/s of each.

One gateway process (``python -m gateway serve``) with an in-process ``provider: local`` deployment; the same
prompts (greedy, EOS ignored, ``--max-tokens`` out each) go, one condition after the other:

- ``live``: as chat requests, ``--live-concurrency`` (32) at once, over HTTP;
- ``offline batch``: as one ``/v1/batches`` batch; the runner hands the engine a window of lines as large as it
  holds (``2 x max_num_seqs``, docs/batches.md), from batch creation to ``completed``.

Prints tokens/s, wall time, the engine's mean running sequences (``gateway_local_engine_running_sequences``
sampled from /metrics) and whether the batch's answers equal the live ones. Bounded: ``--lines`` prompts and
``--deadline-s`` per condition. On a shared machine compare within one run; ``--rounds`` alternates them.

With ``--workers`` the engine runs as a managed worker (``engine.workers``, one per alias) and the batch goes
twice more: ``batch, coalesced`` (lines many per ``POST /v1/batch``, ``coalesce_ms`` 5, backends/coalesce.py)
and ``batch, 1 HTTP/line`` (``coalesce_ms: 0``, the same deployment on its own worker); the table gives the
HTTP requests the worker took for the lines instead of its running sequences.

    nice -n 10 .venv/bin/python bench/local_batch_bench.py [--model smollm2|tiny] [--lines 128] [--rounds 2]
        [--workers]
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
from tests.scale.test_workers import metric  # noqa: E402

ALIAS = "m"
SINGLE = "m-single"  # --workers: the same deployment, its batch lines one HTTP request each
_RUNNING = "gateway_local_engine_running_sequences{"


def deployment(model: str, max_num_seqs: int, tmp: Path, name: str = "m-engine", workers: str = "") -> str:
    """The alias's deployment; ``workers``: its ``engine.workers`` mapping's fields (managed workers)."""
    managed = f", load_timeout_s: 180, workers: {{{workers}}}" if workers else ""
    if model == "tiny":
        from tests.local_engine.conftest import _build

        path = tmp / "tiny"
        if not path.exists():
            _build(path, "llama")
        return (
            f"{{provider: local, name: {name}, model: tiny-llama, model_path: {path}, "
            f"engine: {{max_num_seqs: {max_num_seqs}, block_size: 4, num_kv_blocks: 4096{managed}}}}}"
        )
    return (
        f"{{provider: local, name: {name}, model: SmolLM2-135M-Instruct, "
        f"engine: {{max_num_seqs: {max_num_seqs}, kv_cache_gib: 0.25, max_model_len: 512{managed}}}}}"
    )


def config(files: str, deployment: str, single: str | None = None) -> str:
    more = f"\n  - name: {SINGLE}\n    deployments:\n      - {single}" if single else ""
    return f"""server: {{log_requests: false}}
files: {{dir: {files}}}
batches: {{poll_s: 0.05}}
models:
  - name: {ALIAS}
    deployments:
      - {deployment}{more}
tenants:
  - name: bench
    keys: ["{hash_key(KEY)}"]
"""


def body(i: int, max_tokens: int, alias: str = ALIAS) -> dict[str, Any]:
    words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(8))
    return {
        "model": alias,
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
                assert answer.status_code == 200, answer.text
                return i, answer.json()

        return dict(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(lines))), deadline_s))


def offline(
    url: str, lines: int, max_tokens: int, deadline_s: float, alias: str = ALIAS
) -> tuple[dict[int, Any], float]:
    """The batch's answers by line, and the seconds from creating the batch to its completion."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    data = b"".join(
        orjson.dumps(
            {
                "custom_id": str(i),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body(i, max_tokens, alias),
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


def worker_calls(url: str, deployment: str) -> float:
    """The HTTP requests the gateway sent the deployment's workers: lines alone, and /v1/batch calls."""
    return (
        metric(url, "gateway_engine_worker_requests_total", deployment=deployment)
        - metric(url, "gateway_engine_worker_batch_call_lines_total", deployment=deployment)
        + metric(url, "gateway_engine_worker_batch_calls_total", deployment=deployment)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--lines", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--live-concurrency", type=int, default=32)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--deadline-s", type=float, default=600)
    parser.add_argument("--workers", action="store_true", help="a managed worker: coalesced vs 1 HTTP/line")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, float, int, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        files = str(Path(tmp) / "files")
        if args.workers:
            one = "min: 1, max: 1"
            coalesced = deployment(args.model, args.max_num_seqs, Path(tmp), "m-engine", one)
            single = deployment(
                args.model, args.max_num_seqs, Path(tmp), "m-single", f"{one}, coalesce_ms: 0"
            )
            path.write_text(config(files, coalesced, single))
        else:
            path.write_text(config(files, deployment(args.model, args.max_num_seqs, Path(tmp))))
        with process(serve_argv(str(path), str(port)), url + "/readyz", {}):
            asyncio.run(live(url, 2, 4, 2, args.deadline_s))  # warm-up (the workers started)
            if args.workers:
                offline(url, 2, 4, args.deadline_s, SINGLE)
            for _ in range(args.rounds):
                with RunningSampler(url) as sampler:
                    start = time.perf_counter()
                    answered = asyncio.run(
                        live(url, args.lines, args.max_tokens, args.live_concurrency, args.deadline_s)
                    )
                    wall = time.perf_counter() - start
                running = "-" if args.workers else f"{sampler.mean:.1f}"
                rows.append((f"live, {args.live_concurrency} at once", wall, tokens(answered), running, "-"))
                conditions = [("offline batch", ALIAS, "m-engine")]
                if args.workers:
                    conditions = [
                        ("batch, coalesced", ALIAS, "m-engine"),
                        ("batch, 1 HTTP/line", SINGLE, "m-single"),
                    ]
                for name, alias, deployment_id in conditions:
                    calls = worker_calls(url, deployment_id)
                    with RunningSampler(url) as sampler:
                        batched, wall = offline(url, args.lines, args.max_tokens, args.deadline_s, alias)
                    load = (
                        f"{worker_calls(url, deployment_id) - calls:.0f} HTTP"
                        if args.workers
                        else f"{sampler.mean:.1f}"
                    )
                    equal = sum(text(batched)[i] == t for i, t in text(answered).items())
                    rows.append((name, wall, tokens(batched), load, f"{equal}/{args.lines}"))
    where = "a managed worker" if args.workers else "in-process"
    print(
        f"{args.model}, {where}, max_num_seqs {args.max_num_seqs}; {args.lines} prompts, "
        f"{args.max_tokens} tokens out each (greedy, EOS ignored)"
    )
    load_head = "worker requests" if args.workers else "mean running seqs"
    print(
        f"| condition          | seconds | tokens | tokens/s | lines/s | {load_head:>17} | same answers as live |"
    )
    print(
        "|--------------------|--------:|-------:|---------:|--------:|------------------:|---------------------:|"
    )
    for name, wall, count, load, same in rows:
        print(
            f"| {name:<18} | {wall:>7.1f} | {count:>6} | {count / wall:>8.1f} | {args.lines / wall:>7.1f} "
            f"| {load:>17} | {same:>20} |"
        )


if __name__ == "__main__":
    main()
