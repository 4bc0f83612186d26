"""A batch routed to the local engine (``provider: local``, in-process or managed workers) runs its lines
together in the engine, as many at once as the engine holds, while each line keeps the gateway's policies: the
answers are the ones the same prompts get live (greedy), each line is one ledger record at the batch price. On
managed workers the lines travel many per HTTP request (``POST /v1/batch``, backends/coalesce.py), live
requests one each."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from backends.local import LocalBackend
from backends.workers import WorkerPool
from gateway.keys import GATEWAY
from tests.conftest import KEY, config_text
from tests.harness import ServerThread
from tests.local_engine.conftest import _build
from tests.scale.test_workers import metric, worker_processes
from tests.wait import wait_for as wait_until

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


def _start(start_gateway, upstream, tmp_path: Path, tiny_model: Path, workers: bool) -> ServerThread:
    # a replaced worker starts within the wait (cold starts take 9 to 52 s on a busy 2-core machine)
    managed = ", load_timeout_s: 120, workers: {min: 1, max: 1}" if workers else ""
    models = f"""  - name: tiny
    deployments:
      - provider: local
        model: tiny-llama
        model_path: {tiny_model}
        price: {{input: {PRICE_IN}, output: {PRICE_OUT}}}
        engine: {{block_size: 4, num_kv_blocks: 256, max_num_seqs: 8{managed}}}"""
    # One line in flight for upstream HTTP calls: only the engine's own window lets lines run together.
    server = batch_sections(str(tmp_path / "files"), concurrency=1)
    return start_gateway(config_text(upstream[0].url, models, server=server))


@pytest.fixture(params=["in-process", "workers"])
def gateway(request, upstream, start_gateway, tmp_path, tiny_model) -> ServerThread:
    return _start(start_gateway, upstream, tmp_path, tiny_model, request.param == "workers")


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as c:
        yield c


def _local(gateway: ServerThread) -> LocalBackend | WorkerPool:
    assert gateway.app is not None
    [local] = [b for b in gateway.app[GATEWAY].backends if isinstance(b, (LocalBackend, WorkerPool))]
    return local


def _metrics(gateway: ServerThread) -> dict[str, Any]:
    """The engine's metrics, read where it runs once loaded: in the gateway's process, or its worker's (the
    engine server's /metrics, with the HTTP requests it took by route)."""
    local = _local(gateway)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        if isinstance(local, LocalBackend) and local.engine is not None:
            return dict(local.engine.metrics)
        if isinstance(local, WorkerPool) and local.workers and local.workers[0].ready:
            got = httpx.get(f"http://127.0.0.1:{local.workers[0].port}/metrics", timeout=10)
            return dict(got.json())
        assert time.monotonic() < deadline, "the tiny model did not load"
        time.sleep(0.05)


def _steps(gateway: ServerThread) -> int:
    return int(_metrics(gateway)["steps_total"] or 0)


def _http_requests(gateway: ServerThread) -> dict[str, int]:
    """A managed worker's HTTP requests so far by route (none for the in-process engine)."""
    return dict(_metrics(gateway).get("http_requests_total", {}))


def _run(client: openai.OpenAI, lines: list[dict]) -> Any:
    return wait_for(
        client,
        client.batches.create(
            input_file_id=upload(client, jsonl(lines)),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id,
    )


def _line(i: int) -> dict:
    line = chat_line(f"line-{i}", f"hello number {i} of the batch", "tiny")
    line["body"].update(max_tokens=TOKENS, temperature=0)
    return line


def test_a_local_batch_runs_its_lines_together_and_answers_as_live(client, gateway):
    before, calls_before = _steps(gateway), _http_requests(gateway)
    routed = metric(gateway.url, "gateway_engine_worker_requests_total")
    done = _run(client, [_line(i) for i in range(LINES)])
    steps = _steps(gateway) - before
    calls = Counter(_http_requests(gateway))
    calls.subtract(calls_before)
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

    if isinstance(_local(gateway), WorkerPool):
        # the lines went to the worker many per HTTP request, none alone
        assert 1 <= calls["/v1/batch"] <= LINES // 4, calls
        assert calls["/v1/chat/completions"] == 0, calls
        # while the pool routed and counted each line as a request of its own
        assert metric(gateway.url, "gateway_engine_worker_requests_total") - routed == LINES

    for i in range(LINES):  # the same prompts live, one at a time: the same greedy answers
        asked = _line(i)["body"]
        live = client.chat.completions.create(**asked)
        answer = out[f"line-{i}"]["body"]["choices"][0]
        assert answer["message"]["content"] == live.choices[0].message.content
        assert answer["finish_reason"] == live.choices[0].finish_reason


@pytest.fixture
def workers_gateway(upstream, start_gateway, tmp_path, tiny_model) -> ServerThread:
    return _start(start_gateway, upstream, tmp_path, tiny_model, True)


def test_a_bad_line_on_a_managed_worker_fails_alone_in_the_shared_call(workers_gateway):
    lines = [_line(i) for i in range(6)]
    lines[2]["body"]["top_k"] = "five"  # the engine refuses it (the gateway passes vLLM's fields on)
    with openai.OpenAI(
        base_url=workers_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=60
    ) as client:
        calls_before = _http_requests(workers_gateway)
        done = _run(client, lines)
        calls = Counter(_http_requests(workers_gateway))
        calls.subtract(calls_before)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (5, 1)
        assert calls["/v1/batch"] <= 2 and calls["/v1/chat/completions"] == 0, calls

        out = read_lines(client, done.output_file_id)
        assert sorted(o["custom_id"] for o in out) == [f"line-{i}" for i in (0, 1, 3, 4, 5)]
        assert all(o["response"]["status_code"] == 200 for o in out)
        [error] = read_lines(client, done.error_file_id)
        assert error["custom_id"] == "line-2"
        # the line's own error: what the same request gets live
        with pytest.raises(openai.BadRequestError) as live:
            asked = dict(lines[2]["body"])
            extra = {"top_k": asked.pop("top_k")}
            client.chat.completions.create(**asked, extra_body=extra)
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "top_k"
    assert error["response"]["body"]["error"]["message"] == live.value.body["message"]  # type: ignore[index]


def test_lines_whose_worker_dies_mid_call_are_sent_once_more_to_its_replacement(workers_gateway):
    url = workers_gateway.url
    _metrics(workers_gateway)  # its worker ready
    [(pid, _)] = worker_processes()
    calls, lines_sent, died = (
        metric(url, "gateway_engine_worker_batch_calls_total"),
        metric(url, "gateway_engine_worker_batch_call_lines_total"),
        metric(url, "gateway_engine_worker_exits_total", reason="died"),
    )
    os.kill(pid, signal.SIGSTOP)  # it still accepts the call's connection: the call is in flight on it
    with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        batch = client.batches.create(
            input_file_id=upload(client, jsonl(_line(i) for i in range(6))),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        wait_until(lambda: metric(url, "gateway_engine_worker_batch_call_lines_total") == lines_sent + 6)
        os.kill(pid, signal.SIGKILL)  # dies before answering any line
        done = wait_for(client, batch.id)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
        out = read_lines(client, done.output_file_id)
        assert all(o["response"]["body"]["usage"]["completion_tokens"] > 0 for o in out)
    [(new_pid, _)] = worker_processes()
    assert new_pid != pid
    assert metric(url, "gateway_engine_worker_exits_total", reason="died") == died + 1
    # each line sent once more, to the replacement, again together
    assert metric(url, "gateway_engine_worker_batch_call_lines_total") == lines_sent + 12
    assert 2 <= metric(url, "gateway_engine_worker_batch_calls_total") - calls <= 4
