"""OpenTelemetry traces of requests, with the GenAI semantic conventions (``tracing:`` in config).

One server span per API request (``chat {alias}``), parented on the client's W3C ``traceparent`` when it
sends one, and child spans for its stages: ``admission`` (with ``queue`` inside when it waited), ``cache``
(the lookup), one ``upstream`` per attempt (a client span; its ``traceparent`` goes upstream, with the
client's ``tracestate`` as gateway/tracestate.py lets it through) and ``engine`` for the local engine.

While a request runs, its stages are small records (ids, two clock readings, a shared attribute dict);
when it ends they become ``otlp.SpanRecord`` tuples handed, as one item, to gateway/otlp.py's exporter
thread, which encodes and posts them over OTLP/HTTP. No SDK span is made on that path: live SDK spans (a
tracer, a sampler call, locked attribute maps, a processor call per span) and the SDK's encoder cost more
CPU than the gateway's own path when every request is sampled. SDK ``ReadableSpan``s are made only for
span processors added in process (tests).

Off (the default), this module's SDK part is never imported and no middleware is installed.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web

from backends import spans
from backends.config import DeploymentConfig
from policies.record import RequestRecord

from . import otlp
from .config import TracingConfig
from .keys import RECORD
from .otlp import SpanRecord
from .tracestate import parse as parse_tracestate

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/completions": "text_completion",
    "/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/embeddings": "embeddings",
}
# request fields -> GenAI attributes, set on the request's span
_REQUEST_FIELDS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("seed", "gen_ai.request.seed"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
)
_ENDED_WITH_REQUEST = "ended with the request"
_NONE: Mapping[str, Any] = MappingProxyType({})  # a stage without a deployment's attributes
# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; a later version may append fields
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


class Tracing:
    """One process's trace export, sampler bound and the middleware that starts each request's trace.

    ``send`` replaces the OTLP/HTTP post (benches); ``add_span_processor`` adds an SDK span processor, which
    then gets each span as a ``ReadableSpan`` too (tests read the spans in process)."""

    def __init__(
        self, config: TracingConfig, paths: tuple[str, ...], send: Callable[[bytes], bool] | None = None
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        self.config = config
        # the SDK's resource (service.name, the SDK's name and version, this process's instance id)
        self.resource = Resource.create({"service.name": config.service_name})
        self._sender = None
        if send is None:
            send = self._sender = otlp.HttpSender(config.endpoint, config.headers, config.timeout_s)
        # Large batches, sent every few seconds from the exporter's thread, from a bounded queue (spans beyond
        # it are dropped, never waited for): each batch it encodes and posts takes the GIL from the event loop,
        # so fewer, bigger ones cost the requests less.
        self.exporter = otlp.BatchExporter(
            otlp.SpanEncoder(self.resource.attributes, "llm-gateway"),
            send,
            max_queue=config.max_queue,
            interval_s=config.export_interval_s,
            max_batch=min(config.max_queue, 4096),
        )
        self.processors: list[SpanProcessor] = []
        # ParentBased(TraceIdRatioBased): a trace started here is sampled when its id's low 64 bits fall
        # under the bound (the SDK's rule, so a collector's sampling agrees); a client's flag decides for its own
        self.bound = TraceIdRatioBased.get_bound_for_rate(config.sample_ratio)
        # read-only views, shared by every request's span: the exporter encodes each once (gateway/otlp.py)
        self.deployment_attributes: dict[tuple[str, str, str, str | None, str], Mapping[str, Any]] = {}
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

    def emit(self, trace_id: int, finished: list[SpanRecord]) -> None:
        self.exporter.add((trace_id, finished))
        if self.processors:
            readable = [_readable(self.resource, trace_id, span) for span in finished]
            for processor in self.processors:
                for span in readable:
                    processor.on_end(span)

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        done = self.exporter.force_flush(timeout_s)
        for processor in self.processors:
            processor.force_flush(int(timeout_s * 1000))
        return done

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


class _Remote(NamedTuple):
    """The client's span the request's span continues."""

    span_id: int


class _Stage:
    """A stage's span while the request runs: what the SDK span is made of when the request ends."""

    __slots__ = ("attributes", "end", "error", "kind", "name", "parent_id", "span_id", "start", "status")

    def __init__(
        self, name: str, kind: int, span_id: int, parent_id: int, attributes: Mapping[str, Any]
    ) -> None:
        self.name, self.kind, self.span_id, self.parent_id = name, kind, span_id, parent_id
        self.attributes = attributes  # shared per deployment: never changed in place
        self.start = time.time_ns()
        self.end = 0
        self.status: int | None = None
        self.error: str | None = None


class RequestSpans:
    """One request's trace: its server span and its stages (``backends.spans.Spans``)."""

    __slots__ = (
        "_attributes",
        "_done",
        "_open",
        "_parent",
        "_start",
        "_tracing",
        "name",
        "operation",
        "recording",
        "span_id",
        "state",
        "trace_id",
        "trace_id_int",
    )

    def __init__(self, tracing: Tracing, request: web.Request, record: RequestRecord) -> None:
        self._tracing = tracing
        self._parent: _Remote | None = None
        trace_id = 0
        self.state: str | None = None
        header = request.headers.get("traceparent")
        if header is not None and (parent := _parent(header.strip())) is not None:
            trace_id, parent_id, self.recording = parent
            self._parent = _Remote(parent_id)
            # the spec: a tracestate is read only with a valid traceparent
            if "tracestate" in request.headers:
                self.state = parse_tracestate(request.headers.getall("tracestate"))
        if not trace_id:
            trace_id = random.getrandbits(128) or 1
            self.recording = trace_id & 0xFFFFFFFFFFFFFFFF < tracing.bound
        self.trace_id_int = trace_id
        self.trace_id = f"{trace_id:032x}"
        self.span_id = random.getrandbits(64) or 1
        self._start = time.time_ns()
        self.operation = _OPERATIONS.get(request.path, "")
        self.name = f"{request.method} {request.path}"
        # not sampled: the stages make no records and no attributes are worked out (the trace id still goes
        # into the log line and upstream)
        self._attributes: dict[str, Any] = (
            {
                "http.request.method": request.method,
                "url.path": request.path,
                "gateway.request_id": record.request_id,
                **({"gen_ai.operation.name": self.operation} if self.operation else {}),
            }
            if self.recording
            else {}
        )
        self._open: list[_Stage] = []
        self._done: list[_Stage] = []

    def start(
        self, name: str, deployment: DeploymentConfig | None, deployment_id: str | None
    ) -> _Stage | None:
        if not self.recording:
            return None
        attributes = self._deployment(deployment, deployment_id or "") if deployment is not None else _NONE
        stage = _Stage(
            name,
            otlp.KIND_CLIENT if name == "upstream" else otlp.KIND_INTERNAL,
            random.getrandbits(64) or 1,
            self._open[-1].span_id if self._open else self.span_id,
            attributes,
        )
        self._open.append(stage)
        return stage

    def _deployment(self, deployment: DeploymentConfig, deployment_id: str) -> Mapping[str, Any]:
        """A deployment's span attributes: worked out once per deployment and operation."""
        cache = self._tracing.deployment_attributes
        key = (deployment_id, deployment.provider, deployment.model, deployment.api_base, self.operation)
        found = cache.get(key)
        if found is None:
            attributes: dict[str, Any] = {
                "gen_ai.provider.name": deployment.provider,
                "gen_ai.request.model": deployment.model,
                "gateway.deployment": deployment_id,
            }
            if self.operation:
                attributes["gen_ai.operation.name"] = self.operation
            if deployment.api_base:
                from yarl import URL

                url = URL(deployment.api_base)
                attributes.update({"server.address": url.host or "", "server.port": url.port or 0})
            if len(cache) > 10_000:  # configs reloaded many times: old deployments' entries go
                cache.clear()
            found = cache[key] = MappingProxyType(attributes)
        return found

    def end(self, stage: _Stage | None, status: int | None, error: str | None) -> None:
        if stage is None or stage.end:
            return
        stage.end = time.time_ns()
        stage.status, stage.error = status, error
        self._done.append(stage)
        opened = self._open
        if opened and opened[-1] is stage:
            opened.pop()
        elif stage in opened:
            opened.remove(stage)

    def traceparent(self) -> str:
        span_id = self._open[-1].span_id if self._open else self.span_id
        return f"00-{self.trace_id}-{span_id:016x}-{'01' if self.recording else '00'}"

    def tracestate(self) -> str | None:
        return self.state

    def request(self, body: dict[str, Any]) -> None:
        """The GenAI request attributes of the client's body."""
        if not self.recording:
            return
        attributes = self._attributes
        for name, attribute in _REQUEST_FIELDS:
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[attribute] = value
        attributes["gen_ai.request.stream"] = body.get("stream") is True

    def finish(self, record: RequestRecord) -> None:
        """End the request's span (and any stage left open by an error) with what the record says, and hand
        the request's spans to the processors."""
        if not self.recording:
            return
        end = time.time_ns()
        for stage in reversed(self._open):
            stage.end, stage.error = end, record.error or _ENDED_WITH_REQUEST
            self._done.append(stage)
        self._open.clear()
        attributes = self._attributes
        name = self.name
        if record.alias != "-":
            name = f"{self.operation or 'request'} {record.alias}"
            attributes["gen_ai.request.model"] = record.alias
        attributes["http.response.status_code"] = record.status
        attributes["gateway.tenant"] = record.tenant
        attributes["gateway.key_id"] = record.key_id
        for key, value in (
            ("gen_ai.usage.input_tokens", record.prompt_tokens),
            ("gen_ai.usage.output_tokens", record.completion_tokens),
            ("gateway.deployment", record.deployment),
            ("gateway.cache", record.cache),
            ("gateway.cost_usd", record.cost_usd),
            ("gateway.ttft_s", record.ttft_s),
        ):
            if value is not None:
                attributes[key] = value
        status, message = otlp.STATUS_UNSET, ""
        if record.status >= 500 or record.status == 499:
            attributes["error.type"] = str(record.status)
            status, message = otlp.STATUS_ERROR, record.error or ""
        elif record.status >= 400 and record.error:
            attributes["error.type"] = str(record.status)
        root_id = self.span_id
        finished = []
        for stage in self._done:
            stage_attributes: Mapping[str, Any] = stage.attributes
            stage_status, stage_message = otlp.STATUS_UNSET, ""
            if stage.status is not None or stage.error is not None:
                stage_attributes = dict(stage_attributes)
                if stage.status is not None:
                    stage_attributes["http.response.status_code"] = stage.status
                if stage.error is not None:
                    stage_attributes["error.type"] = str(stage.status) if stage.status else "error"
                    stage_status, stage_message = otlp.STATUS_ERROR, stage.error
            finished.append(
                SpanRecord(
                    stage.name,
                    stage.span_id,
                    stage.parent_id,
                    False,
                    stage.kind,
                    stage.start,
                    stage.end,
                    stage_status,
                    stage_message,
                    stage_attributes,
                )
            )
        parent = self._parent
        finished.append(
            SpanRecord(
                name,
                root_id,
                parent.span_id if parent is not None else 0,
                parent is not None,
                otlp.KIND_SERVER,
                self._start,
                end,
                status,
                message,
                attributes,
            )
        )
        self._tracing.emit(self.trace_id_int, finished)


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
