"""Tracing's CPU per request, in process: the event loop's share and the export thread's, per span set.

One "request" is what the gateway does with a traced API request: the middleware opens its trace (with
and without a client ``traceparent``), the pipeline sets the GenAI request attributes, ``admission``,
``cache`` and one ``upstream`` stage open and end (the upstream's ``traceparent`` read as backends/http.py
does), and the request's end sets the usage attributes and finishes the trace. The spans go to a batch
processor whose exporter encodes them to OTLP protobuf (what the real exporter sends) and drops the bytes.

Columns: loop µs (thread CPU of the request path, what the event loop pays), export µs (the rest of the
process's CPU until the processor has flushed: the export thread's encoding), total µs, and the share of a
gateway request's own CPU (``--gateway-us``, default 460 µs: the server CPU per request that
bench/gateway_bench.py measured with logs on, docs/performance.md) that the gateway keeps with tracing on:
1 / (1 + total / gateway). In-process figures move less with other load than bench/ops_bench.py's req/s.

With the exporter process (``--exporter process``, as shipped) the export column is that process's CPU
(from /proc), which runs on its own GIL; ``--exporter thread`` measures the in-process exporter thread.

    python bench/tracing_overhead.py [--requests 20000] [--rounds 3] [--gateway-us 460] [--exporter thread]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from backends import spans
from backends.config import DeploymentConfig
from gateway import tracing
from gateway.config import TracingConfig
from policies.record import RequestRecord


class EncodingExporter(SpanExporter):
    """The export's work without the network: the SDK exporter's encoding (before), or the bytes the
    gateway's exporter thread encoded (after), counted and dropped."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0
        self.bodies: list[bytes] = []

    def export(self, batch: Any) -> SpanExportResult:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        self.spans += len(batch)
        self.bytes += len(encode_spans(batch).SerializeToString())
        return SpanExportResult.SUCCESS

    def sent(self, body: bytes) -> bool:
        self.bodies.append(body)  # decoded after the measured window (count_sent)
        return True

    def count_sent(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        for body in self.bodies:
            export = ExportTraceServiceRequest()
            export.ParseFromString(body)
            self.bytes += len(body)
            self.spans += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        self.bodies.clear()

    def shutdown(self) -> None:
        pass


def make_tracing(ratio: float, exporter: EncodingExporter, process: bool = False) -> Any:
    make: Any = tracing.Tracing  # either version's signature
    config = TracingConfig(enabled=True, sample_ratio=ratio, max_queue=1 << 22, export_interval_s=3600)
    if process:  # the exporter process (as shipped), encoding and posting nothing
        return make(config, ("/v1/",), discard=True)
    try:  # the gateway's own exporter thread, encoding as it does, posting nowhere
        return make(config, ("/v1/",), send=exporter.sent)
    except TypeError:  # before: an SDK TracerProvider, a batch processor and the SDK's encoder
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        # a processor that never exports on its own: the loop's figure excludes the export thread's
        processor = BatchSpanProcessor(
            exporter, max_queue_size=1 << 22, schedule_delay_millis=3_600_000, max_export_batch_size=1 << 22
        )
        provider = TracerProvider(
            resource=Resource.create({"service.name": "bench"}), sampler=ParentBased(TraceIdRatioBased(ratio))
        )
        provider.add_span_processor(processor)
        return make(config, ("/v1/",), provider=provider)


def flush(traced: Any) -> None:
    getattr(traced, "provider", traced).force_flush()


DEPLOYMENT = DeploymentConfig(
    provider="openai-compatible", model="gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="x"
)
BODY = {
    "model": "chat",
    "max_tokens": 64,
    "temperature": 0.5,
    "messages": [{"role": "user", "content": "hi"}],
}


def one_request(traced: Any, headers: dict[str, str], n: int) -> None:
    request = SimpleNamespace(method="POST", path="/v1/chat/completions", headers=headers)
    record = RequestRecord(request_id=f"req-{n}", started=0.0, endpoint="/v1/chat/completions")
    record.trace = trace = tracing.RequestSpans(traced, request, record)  # type: ignore[arg-type]
    token = spans.CURRENT.set(trace)
    try:
        trace.request(BODY)
        admission = spans.start("admission")
        spans.end(admission)
        cache = spans.start("cache")
        spans.end(cache)
        upstream = spans.start("upstream", DEPLOYMENT, "chat/0")
        assert spans.traceparent() is not None
        spans.end(upstream, 200)
    finally:
        spans.CURRENT.reset(token)
    record.tenant, record.key_id, record.alias, record.deployment = "acme", "k1", "chat", "chat/0"
    record.status, record.prompt_tokens, record.completion_tokens, record.cost_usd = 200, 12, 30, 0.00012
    record.cache, record.ttft_s = "miss", 0.012
    trace.finish(record)


def child_seconds(traced: Any) -> float:
    """CPU seconds of the exporter process so far (0 without one)."""
    pid = getattr(getattr(traced, "exporter", None), "pid", None)
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(ratio: float, client_parent: bool, requests: int, process: bool) -> tuple[float, float, float]:
    exporter = EncodingExporter()
    traced = make_tracing(ratio, exporter, process)
    headers = (
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"} if client_parent else {}
    )
    for n in range(200):  # warm up (first-call imports, caches)
        one_request(traced, headers, n)
    flush(traced)
    exporter.bodies.clear()
    exporter.spans = 0
    child = child_seconds(traced)
    cpu, start = time.process_time(), time.thread_time()
    for n in range(requests):
        one_request(traced, headers, n)
    loop = time.thread_time() - start
    flush(traced)  # the export thread encodes what the loop queued (and what it took already); this one waits
    export = time.process_time() - cpu - loop + child_seconds(traced) - child
    exporter.count_sent()
    spans_each = exporter.spans / requests
    if process:  # the spans the exporter process received
        spans_each = traced.exporter._report.get("received", 0) / (requests + 200)
    traced.close()
    return loop / requests * 1e6, export / requests * 1e6, spans_each


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gateway-us", type=float, default=460.0)
    parser.add_argument(
        "--exporter",
        choices=("process", "thread"),
        default="process",
        help="the exporter process (as shipped; its CPU read from /proc) or the in-process thread",
    )
    args = parser.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())
    rows = {
        "sampled, trace started here": (1.0, False),
        "sampled, client traceparent": (1.0, True),
        "sample_ratio 0.1": (0.1, False),
        "sample_ratio 0 (not sampled)": (0.0, False),
    }
    print(
        f"| row ({args.requests} requests, median of {args.rounds}) | spans/request | loop µs | export µs "
        f"| total µs | kept of a {args.gateway_us:.0f} µs request |"
    )
    print("|---|---|---|---|---|---|")
    for name, (ratio, parent) in rows.items():
        runs = [run(ratio, parent, args.requests, args.exporter == "process") for _ in range(args.rounds)]
        loop = statistics.median(r[0] for r in runs)
        export = statistics.median(r[1] for r in runs)
        total = loop + export
        print(
            f"| {name} | {runs[0][2]:.1f} | {loop:.1f} | {export:.1f} | {total:.1f} "
            f"| {1 / (1 + total / args.gateway_us):.1%} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
