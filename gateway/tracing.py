"""OpenTelemetry traces of requests, with the GenAI semantic conventions (``tracing:`` in config).

One server span per API request (``chat {alias}``), parented on the client's W3C ``traceparent`` when it
sends one, and child spans for its stages: ``admission`` (with ``queue`` inside when it waited), ``cache``
(the lookup), one ``upstream`` per attempt (a client span; its ``traceparent`` goes upstream, with the
client's ``tracestate`` as gateway/tracestate.py lets it through) and ``engine`` for the local engine.

While a request runs, its stages are tuples (name, ids, a clock reading, its deployment's key). When it
ends, the request's trace is one flat tuple of plain values (``RequestTrace``: ids, clock readings, the
record's fields, the stages' tuples) handed to the exporter process (gateway/trace_export.py: batches of
them, serialized with ``marshal``, over a pipe), where gateway/otlp.py's exporter thread and
``RequestEncoder`` turn them into OTLP spans, attributes and all, on that process's GIL. The loop builds
no attribute dict and no span object, and the cyclic GC stops tracking a tuple of plain values at its first
collection, so the traces waiting for their batch (up to 128 requests) are not scanned again by every later collection, as the span
records and dicts that stood there before were (most of what tracing cost the loop beyond its own code). No
SDK span is made on that path: live SDK spans (a tracer, a sampler call, locked attribute maps, a processor
call per span) and the SDK's encoder cost more CPU than the gateway's own path when every request is
sampled. SDK ``ReadableSpan``s are made, from ``records``, only for span processors added in process (tests).

Off (the default), this module's SDK part is never imported and no middleware is installed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from random import getrandbits
from time import time_ns
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from backends import spans
from backends.config import DeploymentConfig
from policies.record import RequestRecord

from . import otlp
from .config import TracingConfig
from .keys import RECORD
from .otlp import SpanRecord
from .trace_encoding import (
    _REQUEST_FIELDS,
    DeploymentKey,
    RequestEncoder,
    RequestTrace,
    deployment_attributes,
    records,
)
from .tracestate import parse as parse_tracestate

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

    from .trace_export import ExporterProcess

_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/completions": "text_completion",
    "/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/embeddings": "embeddings",
}
# the body's fields a trace keeps: those of _REQUEST_FIELDS, then "stream"
_BODY_FIELDS = (*(field for field, _ in _REQUEST_FIELDS), "stream")
_ENDED_WITH_REQUEST = "ended with the request"
_LOW_64 = 0xFFFFFFFFFFFFFFFF
# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; a later version may append fields
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


class Tracing:
    """One process's trace export, sampler bound and the middleware that starts each request's trace.

    The spans are encoded and posted by an exporter process (gateway/trace_export.py), or with ``exporter:
    thread`` by a thread in this process; ``send`` makes it that thread and hands it each encoded export
    request (tests and benches that read the bytes), and ``discard`` has the process encode and post nothing
    (benches).
    ``add_span_processor`` adds an SDK span processor, which then gets each span as a ``ReadableSpan`` too
    (tests read the spans in process)."""

    def __init__(
        self,
        config: TracingConfig,
        paths: tuple[str, ...],
        send: Callable[[bytes], bool] | None = None,
        *,
        discard: bool = False,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        self.config = config
        # the SDK's resource (service.name, the SDK's name and version, this process's instance id)
        self.resource = Resource.create({"service.name": config.service_name})
        self._sender: otlp.HttpSender | None = None
        self.exporter: otlp.BatchExporter | ExporterProcess
        if send is None and config.exporter == "thread":  # (docs/operations.md: where it may pay)
            send = self._sender = otlp.HttpSender(config.endpoint, config.headers, config.timeout_s)
        if send is None:
            from .trace_export import ExporterProcess

            # The encoding and the posts in a process of their own (gateway/trace_export.py): on a thread of
            # this one they took the GIL from the event loop, which paid for it beyond their own CPU.
            self.exporter = ExporterProcess(
                {
                    "endpoint": config.endpoint,
                    "headers": dict(config.headers),
                    "timeout_s": config.timeout_s,
                    "max_queue": config.max_queue,
                    "interval_s": config.export_interval_s,
                    "resource": dict(self.resource.attributes),
                    "scope": "llm-gateway",
                    "discard": discard,
                },
                max_queue=config.max_queue,
                timeout_s=config.timeout_s,
            )
        else:
            # In process (``exporter: thread``; tests and benches that read the bytes): large batches, sent every few seconds from
            # the exporter's thread, from a bounded queue (spans beyond it are dropped, never waited for).
            self.exporter = otlp.BatchExporter(
                RequestEncoder(self.resource.attributes, "llm-gateway"),
                send,
                max_queue=config.max_queue,
                interval_s=config.export_interval_s,
                max_batch=min(config.max_queue, 4096),
            )
        self.processors: list[SpanProcessor] = []
        # ParentBased(TraceIdRatioBased): a trace started here is sampled when its id's low 64 bits fall
        # under the bound (the SDK's rule, so a collector's sampling agrees); a client's flag decides for its own
        self.bound = TraceIdRatioBased.get_bound_for_rate(config.sample_ratio)
        # a deployment's attributes by its key, for the span processors' copies (``records``)
        self.deployment_attributes: dict[DeploymentKey, Mapping[str, Any]] = {}
        self.paths = paths

    def add_span_processor(self, processor: SpanProcessor) -> None:
        self.processors.append(processor)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        record = request.get(RECORD)
        if record is None or not request.path.startswith(self.paths):
            return await handler(request)
        trace = record.trace = RequestSpans(self, request, record)
        token = spans.CURRENT.set(trace)
        try:
            return await handler(request)
        finally:
            spans.CURRENT.reset(token)

    def emit(self, trace: RequestTrace) -> None:
        self.exporter.add(trace, len(trace[1]) + 1)  # its stages and the request's own span
        if self.processors:
            trace_id = trace[0]
            readable = [
                _readable(self.resource, trace_id, span)
                for span in records(trace, self._deployment_attributes)
            ]
            for processor in self.processors:
                for span in readable:
                    processor.on_end(span)

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        done = self.exporter.force_flush(timeout_s)
        for processor in self.processors:
            processor.force_flush(int(timeout_s * 1000))
        return done

    def _deployment_attributes(self, key: DeploymentKey) -> Mapping[str, Any]:
        found = self.deployment_attributes.get(key)
        if found is None:
            if len(self.deployment_attributes) > 10_000:  # configs reloaded many times: old entries go
                self.deployment_attributes.clear()
            found = self.deployment_attributes[key] = MappingProxyType(deployment_attributes(key))
        return found

    def close(self) -> None:
        self.exporter.shutdown()  # sends what it holds first
        for processor in self.processors:
            processor.shutdown()
        if self._sender is not None:
            self._sender.close()


def _readable(resource: Any, trace_id: int, span: SpanRecord) -> ReadableSpan:
    """An SDK span of a record, for in-process span processors."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    flags = TraceFlags(TraceFlags.SAMPLED)
    kinds = {otlp.KIND_SERVER: SpanKind.SERVER, otlp.KIND_CLIENT: SpanKind.CLIENT}
    status = (
        Status(StatusCode.ERROR, span.message)
        if span.status == otlp.STATUS_ERROR
        else Status(StatusCode.UNSET)
    )
    parent = SpanContext(trace_id, span.parent_id, span.parent_remote, flags) if span.parent_id else None
    return ReadableSpan(
        span.name,
        SpanContext(trace_id, span.span_id, False, flags),
        parent,
        resource,
        dict(span.attributes),
        (),
        (),
        kinds.get(span.kind, SpanKind.INTERNAL),
        None,
        status,
        span.start,
        span.end,
        InstrumentationScope("llm-gateway"),
    )


# A stage: name, span id, parent span id, start (ns), its deployment's key (None: no deployment).
Stage = tuple[str, int, int, int, "DeploymentKey | None"]
# An ended stage: the stage's values, then its end (ns), the upstream's HTTP status and the error (None:
# none). One flat tuple: a tuple per stage and another per ending would each be one more allocation that the
# GC counts until the trace's batch goes to the exporter (or, with ``exporter: thread``, until it is encoded).
Ended = tuple[str, int, int, int, "DeploymentKey | None", int, "int | None", "str | None"]


class RequestSpans:
    """One request's trace: its server span and its stages (``backends.spans.Spans``)."""

    __slots__ = (
        "_done",
        "_fields",
        "_open",
        "_parent_id",
        "_start",
        "_tracing",
        "method",
        "operation",
        "path",
        "recording",
        "span_id",
        "state",
        "trace_id",
        "trace_id_int",
    )

    def __init__(self, tracing: Tracing, request: web.Request, record: RequestRecord) -> None:
        self._tracing = tracing
        self.state: str | None = None
        headers = request.headers
        header = headers.get("traceparent")
        parent = _parent(header.strip()) if header is not None else None
        if parent is not None:
            trace_id, self._parent_id, self.recording = parent
            # the spec: a tracestate is read only with a valid traceparent
            if "tracestate" in headers:
                self.state = parse_tracestate(headers.getall("tracestate"))
        else:
            trace_id = getrandbits(128) or 1
            self._parent_id = 0
            self.recording = trace_id & _LOW_64 < tracing.bound
        self.trace_id_int = trace_id
        self.trace_id = f"{trace_id:032x}"
        self.span_id = getrandbits(64) or 1
        self._start = time_ns()
        # not sampled: the stages make no records (the trace id still goes into the log line and upstream)
        self.method, self.path = request.method, request.path
        self.operation = _OPERATIONS.get(self.path, "")
        self._fields: tuple[Any, ...] | None = None
        self._open: list[Stage] = []
        self._done: list[Ended] = []

    def start(
        self, name: str, deployment: DeploymentConfig | None, deployment_id: str | None
    ) -> Stage | None:
        if not self.recording:
            return None
        opened = self._open
        stage = (
            name,
            getrandbits(64) or 1,
            opened[-1][1] if opened else self.span_id,
            time_ns(),
            None
            if deployment is None
            else (
                deployment_id or "",
                deployment.provider,
                deployment.model,
                deployment.api_base,
                self.operation,
            ),
        )
        opened.append(stage)
        return stage

    def end(self, stage: Stage | None, status: int | None, error: str | None) -> None:
        if stage is None:
            return
        opened = self._open
        if opened and opened[-1] is stage:
            opened.pop()
        else:
            for index, other in enumerate(opened):
                if other is stage:
                    del opened[index]
                    break
            else:
                return  # ended already
        self._done.append((*stage, time_ns(), status, error))

    def traceparent(self) -> str:
        opened = self._open
        span_id = opened[-1][1] if opened else self.span_id
        return f"00-{self.trace_id}-{span_id:016x}-{'01' if self.recording else '00'}"

    def tracestate(self) -> str | None:
        return self.state

    def request(self, body: dict[str, Any]) -> None:
        """The client's body's GenAI request fields, as they came (checked and named on the exporter's
        thread)."""
        if self.recording:
            self._fields = tuple(map(body.get, _BODY_FIELDS))

    def finish(self, record: RequestRecord) -> None:
        """End the request's span (and any stage left open by an error) with what the record says, and hand
        the request's trace to the exporter."""
        if not self.recording:
            return
        end = time_ns()
        done = self._done
        if self._open:
            error = record.error or _ENDED_WITH_REQUEST
            done.extend((*stage, end, None, error) for stage in reversed(self._open))
            self._open.clear()
        self._tracing.emit(
            (
                self.trace_id_int,
                tuple(done),
                self.span_id,
                self._parent_id,
                self._start,
                end,
                self.method,
                self.path,
                record.request_id,
                self.operation,
                self._fields,
                record.alias,
                record.status,
                record.tenant,
                record.key_id,
                record.prompt_tokens,
                record.completion_tokens,
                record.deployment,
                record.cache,
                record.cost_usd,
                record.ttft_s,
                record.error,
            )
        )


def _parent(header: str) -> tuple[int, int, bool] | None:
    """The client's trace id, span id and sampled flag from its ``traceparent``; None when it is not a valid
    one (the W3C rules: no version ff, no all-zero ids, version 00 has exactly four fields)."""
    match = _TRACEPARENT.fullmatch(header)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or not int(trace_id, 16) or not int(span_id, 16):
        return None
    return int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1)


def build(config: TracingConfig, paths: tuple[str, ...]) -> Tracing | None:
    """The tracer when ``tracing.enabled``; None (and no OpenTelemetry import) otherwise."""
    return Tracing(config, paths) if config.enabled else None
