"""A batch routed to the local engine (``provider: local``, in-process or managed workers) runs its lines
together in the engine, as many at once as the engine holds, while each line keeps the gateway's policies: the
answers are the ones the same prompts get live (greedy), each line is one ledger record at the batch price."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from backends.local import LocalBackend
from backends.workers import WorkerPool
from gateway.keys import GATEWAY
from tests.conftest import KEY, config_text
from tests.harness import ServerThread
from tests.local_engine.conftest import _build

from .conftest import (
    DEADLINE_S,
    batch_records,
    batch_sections,
    chat_line,
    jsonl,
    read_lines,
    upload,
    wait_for,
)

LINES = 12
TOKENS = 8
PRICE_IN, PRICE_OUT = 1.0, 4.0  # USD per million tokens


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(params=["in-process", "workers"])
def gateway(request, upstream, start_gateway, tmp_path, tiny_model) -> ServerThread:
    workers = ", workers: {min: 1, max: 1}" if request.param == "workers" else ""
    models = f"""  - name: tiny
    deployments:
      - provider: local
        model: tiny-llama
        model_path: {tiny_model}
        price: {{input: {PRICE_IN}, output: {PRICE_OUT}}}
        engine: {{block_size: 4, num_kv_blocks: 256, max_num_seqs: 8{workers}}}"""
    # One line in flight for upstream HTTP calls: only the engine's own window lets lines run together.
    server = batch_sections(str(tmp_path / "files"), concurrency=1)
    return start_gateway(config_text(upstream[0].url, models, server=server))


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as c:
        yield c


def _steps(gateway: ServerThread) -> int:
    """The engine's steps so far, read where it runs: in the gateway's process or in its worker (the engine
    server's /metrics), once loaded."""
    assert gateway.app is not None
    [local] = [b for b in gateway.app[GATEWAY].backends if isinstance(b, (LocalBackend, WorkerPool))]
    deadline = time.monotonic() + DEADLINE_S
    while True:
        if isinstance(local, LocalBackend) and local.engine is not None:
            return int(local.engine.metrics["steps_total"] or 0)
        if isinstance(local, WorkerPool) and local.workers and local.workers[0].ready:
            got = httpx.get(f"http://127.0.0.1:{local.workers[0].port}/metrics", timeout=10)
            return int(got.json()["steps_total"])
        assert time.monotonic() < deadline, "the tiny model did not load"
        time.sleep(0.05)


def _line(i: int) -> dict:
    line = chat_line(f"line-{i}", f"hello number {i} of the batch", "tiny")
    line["body"].update(max_tokens=TOKENS, temperature=0)
    return line


def test_a_local_batch_runs_its_lines_together_and_answers_as_live(client, gateway):
    before = _steps(gateway)
    done = wait_for(
        client,
        client.batches.create(
            input_file_id=upload(client, jsonl(_line(i) for i in range(LINES))),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id,
    )
    steps = _steps(gateway) - before
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
    out = {line["custom_id"]: line["response"] for line in read_lines(client, done.output_file_id)}
    assert len(out) == LINES

    generated = sum(r["body"]["usage"]["completion_tokens"] for r in out.values())
    assert generated > LINES  # the lines generated more than one token each: they had steps to share
    # Lines one after the other take a step per generated token; together, many lines share each step.
    assert steps * 3 <= generated, f"{steps} engine steps for {generated} tokens"

    records = batch_records(gateway.url, LINES)
    assert len(records) == LINES  # one ledger record per line
    for record in records:
        full = (record["prompt_tokens"] * PRICE_IN + record["completion_tokens"] * PRICE_OUT) / 1e6
        assert record["cost_usd"] == pytest.approx(full / 2)  # at the batch price
    assert sorted(r["completion_tokens"] for r in records) == sorted(
        r["body"]["usage"]["completion_tokens"] for r in out.values()
    )

    for i in range(LINES):  # the same prompts live, one at a time: the same greedy answers
        asked = _line(i)["body"]
        live = client.chat.completions.create(**asked)
        answer = out[f"line-{i}"]["body"]["choices"][0]
        assert answer["message"]["content"] == live.choices[0].message.content
        assert answer["finish_reason"] == live.choices[0].finish_reason
