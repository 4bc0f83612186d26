"""The trace exporter process (gateway/trace_export.py): everything handed to it reaches a real OTLP/HTTP
receiver by shutdown; a full pipe drops spans instead of blocking the worker; a dead exporter is counted
(restarts, spans lost) and started again; a gateway stopped with SIGTERM leaves no exporter behind and
its spans delivered."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gateway import trace_export, tracing
from gateway.config import TracingConfig
from policies.record import RequestRecord
from tests.conftest import KEY, config_text
from tests.ops.gateway_process import GatewayProcess, poll


def finish_requests(traced: tracing.Tracing, count: int, first: int = 0) -> None:
    """``count`` traced requests (a request span and one upstream stage each: 2 spans), as the gateway
    finishes them; request ids req-{first}..."""
    request = SimpleNamespace(method="POST", path="/v1/chat/completions", headers={})
    for n in range(first, first + count):
        record = RequestRecord(request_id=f"req-{n}", started=0.0, endpoint="/v1/chat/completions")
        trace = tracing.RequestSpans(traced, request, record)  # type: ignore[arg-type]
        trace.end(trace.start("upstream", None, None), 200, None)
        record.alias, record.status, record.tenant, record.key_id = "chat", 200, "acme", "k1"
        trace.finish(record)


def config(endpoint: str = "http://127.0.0.1:9/v1/traces", **overrides: Any) -> TracingConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "endpoint": endpoint,
        "export_interval_s": 3600.0,
        "timeout_s": 5.0,
    }
    return TracingConfig(**(values | overrides))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_shutdown_delivers_every_span_to_the_collector(receiver):
    """Nothing is sent before shutdown (an hour's interval, batches far below the exporter's 4,096 spans):
    closing hands the buffered traces over, and the exporter process posts them all before it exits."""
    traced = tracing.Tracing(config(f"{receiver.server.url}/v1/traces"), ("/v1/",))
    assert isinstance(traced.exporter, trace_export.ExporterProcess)
    pid = traced.exporter.pid
    assert pid is not None
    finish_requests(traced, 1000)
    assert receiver.spans() == []
    traced.close()
    assert not alive(pid)
    spans = receiver.spans()
    assert len(spans) == 2000
    resource, _ = spans[0]
    assert resource["service.name"] == "llm-gateway"
    ids = {a.value.string_value for _, s in spans for a in s.attributes if a.key == "gateway.request_id"}
    assert ids == {f"req-{n}" for n in range(1000)}
    assert traced.exporter.dropped == 0


def test_a_full_pipe_drops_spans_instead_of_blocking_the_worker():
    """With the exporter process stopped (SIGSTOP: it reads nothing), the pipe fills, then the worker's
    buffer up to max_queue spans; the rest are dropped and counted, and adding never waits. Once it runs
    again, everything that was not dropped reaches it."""
    traced = tracing.Tracing(config(max_queue=2000), ("/v1/",), discard=True)
    exporter = traced.exporter
    assert isinstance(exporter, trace_export.ExporterProcess)
    assert exporter.pid is not None
    assert exporter.force_flush(30)  # it runs and has read its settings
    before = trace_export.DROPPED.labels("queue_full")._value.get()
    os.kill(exporter.pid, signal.SIGSTOP)
    try:
        done = threading.Event()

        def add() -> None:
            finish_requests(traced, 10_000)  # 20,000 spans, ~4 MB: four times the pipe and the buffer
            done.set()

        thread = threading.Thread(target=add, daemon=True)
        thread.start()
        assert done.wait(20), "adding spans blocked on a full pipe"
    finally:
        os.kill(exporter.pid, signal.SIGCONT)
    dropped = exporter.dropped_by.get("queue_full", 0)
    assert 0 < dropped < 20_000
    assert trace_export.DROPPED.labels("queue_full")._value.get() - before == dropped
    assert exporter.force_flush(30)
    assert exporter._report["received"] == 20_000 - dropped  # every span written reached it
    traced.close()


def test_a_dead_exporter_is_counted_and_started_again(monkeypatch):
    """SIGKILL the exporter process: the next batch finds it gone, counts the spans it held and the ones
    sent meanwhile as dropped, and after the backoff a new one takes the traces."""
    monkeypatch.setattr(trace_export, "_FIRST_BACKOFF_S", 0.3)
    traced = tracing.Tracing(config(), ("/v1/",), discard=True)
    exporter = traced.exporter
    assert isinstance(exporter, trace_export.ExporterProcess)
    exporter.batch = 10
    restarts = trace_export.RESTARTS._value.get()
    first = exporter.pid
    assert first is not None
    assert exporter.force_flush(30)
    os.kill(first, signal.SIGSTOP)  # it holds the next batch: read from the pipe by nobody yet
    finish_requests(traced, 10)
    os.kill(first, signal.SIGKILL)
    process = exporter._process
    assert process is not None
    # (its threads gone too: until then the kernel does not report it to the worker)
    poll(lambda: process.poll() is not None, "the exporter gone")
    finish_requests(traced, 10, 10)  # finds it dead: counted, and these dropped (within the backoff)
    assert exporter.deaths == 1
    assert trace_export.RESTARTS._value.get() - restarts == 1
    assert exporter.dropped_by.get("exporter_died", 0) == 20  # the batch in its pipe
    assert exporter.dropped_by.get("exporter_down", 0) == 20
    assert exporter.pid is None
    time.sleep(0.4)
    finish_requests(traced, 10, 20)  # after the backoff: a new exporter takes them
    second = exporter.pid
    assert second is not None and second != first
    assert exporter.force_flush(30)
    assert exporter._report["received"] == 20
    assert exporter.dropped == 40
    traced.close()
    assert not alive(second)


def descendants(pid: int) -> set[int]:
    """The process's children, theirs, and so on (from /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.add(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:  # gone meanwhile
        return ""


def test_a_gateway_with_workers_stopped_by_sigterm_exports_every_span_and_leaves_no_exporter(
    upstream, receiver, tmp_path
):
    """``--workers 2``: each worker starts its own exporter process; SIGTERM to the supervisor stops the
    workers, each closes its exporter's pipe, and every request's span reaches the collector before the
    exporters exit (an hour's export interval: nothing went before)."""
    import httpx

    path = tmp_path / "config.yaml"
    path.write_text(
        config_text(upstream[0].url)
        + f"""
tracing:
  enabled: true
  endpoint: {receiver.server.url}/v1/traces
  export_interval_s: 3600
"""
    )
    gateway = GatewayProcess(path, tmp_path / "gateway.log", workers=2).wait_ready()
    try:
        # the workers (children of the supervisor, beside multiprocessing's resource tracker) and theirs
        exporters = poll(
            lambda: (
                (
                    found := {
                        pid
                        for pid in descendants(gateway.process.pid)
                        if "gateway.trace_export" in cmdline(pid)
                    }
                )
                and len(found) == 2
                and found
            ),
            "an exporter process per worker",
        )
        ids = set()
        for n in range(40):
            answer = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"model": "chat", "messages": [{"role": "user", "content": f"hi {n}"}]},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            ids.add(answer.headers["x-request-id"])
        assert receiver.spans() == []
    finally:
        gateway.stop()  # SIGTERM, then waits for the supervisor
    assert gateway.process.returncode == 0, gateway.log.read_text()
    assert not [pid for pid in exporters if Path(f"/proc/{pid}").exists()]
    exported = {
        a.value.string_value
        for _, s in receiver.spans()
        for a in s.attributes
        if a.key == "gateway.request_id"
    }
    assert exported == ids


def test_the_thread_exporter_chosen_in_config_posts_from_the_worker(receiver):
    """``exporter: thread``: no process; the worker's own thread posts the spans, everything by close."""
    traced = tracing.Tracing(config(f"{receiver.server.url}/v1/traces", exporter="thread"), ("/v1/",))
    assert not hasattr(traced.exporter, "pid")
    finish_requests(traced, 50)
    traced.close()
    assert len(receiver.spans()) == 100
