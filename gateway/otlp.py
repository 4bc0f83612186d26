"""OTLP/HTTP protobuf export of finished spans, encoded for the gateway's spans at a fraction of the SDK's cost.

The OTLP exporter's generic encoder builds a protobuf message per span and per attribute (~35 µs a span
here, more than the request path's whole tracing cost). Protobuf messages concatenate: a span's bytes
are its fixed fields (ids, name, kind, times, status) followed by one length-delimited entry per
attribute. The entries repeat across requests (method, path, tenant, alias, deployment, status...), so
each ``(key, value)`` is encoded once and its bytes reused; only the varying ones (request id, tokens,
cost) are encoded per span. Events and links are not encoded: the gateway's spans have none.

Sent from the batch processor's thread with ``requests`` (the OTLP exporter's own HTTP client); a
collector answering 429, 502, 503 or 504, or not answering, is tried again with backoff within the
timeout, and the batch is dropped after that (traces are never worth holding requests for).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

_KINDS = {SpanKind.INTERNAL: Span.SPAN_KIND_INTERNAL, SpanKind.SERVER: Span.SPAN_KIND_SERVER,
          SpanKind.CLIENT: Span.SPAN_KIND_CLIENT, SpanKind.PRODUCER: Span.SPAN_KIND_PRODUCER,
          SpanKind.CONSUMER: Span.SPAN_KIND_CONSUMER}
_STATUS = {StatusCode.UNSET: Status.STATUS_CODE_UNSET, StatusCode.OK: Status.STATUS_CODE_OK,
           StatusCode.ERROR: Status.STATUS_CODE_ERROR}
# OTLP span flags: bit 8 says bit 9 is set, bit 9 says the parent is remote
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_RETRY_STATUS = frozenset({429, 502, 503, 504})
_MAX_CACHED = 8192
log = logging.getLogger(__name__)


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, Sequence):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


class SpanEncoder:
    """Finished spans to one ``ExportTraceServiceRequest``'s bytes. Not thread-safe: one per exporter."""

    def __init__(self) -> None:
        self._attributes: dict[tuple[str, type, Any], bytes] = {}

    def _attribute(self, key: str, value: Any) -> bytes:
        cache_key = (key, type(value), value if not isinstance(value, list) else tuple(value))
        found = self._attributes.get(cache_key)
        if found is None:
            # a one-attribute Span serializes to exactly that attribute's repeated-field entry
            found = Span(attributes=[KeyValue(key=key, value=any_value(value))]).SerializeToString()
            if len(self._attributes) >= _MAX_CACHED:  # varying values fill it: start again
                self._attributes.clear()
            self._attributes[cache_key] = found
        return found

    def span(self, span: ReadableSpan) -> bytes:
        context = span.context
        parent = span.parent
        status = span.status
        fixed = Span(
            trace_id=context.trace_id.to_bytes(16, "big"), span_id=context.span_id.to_bytes(8, "big"),
            parent_span_id=parent.span_id.to_bytes(8, "big") if parent is not None else b"",
            name=span.name, kind=_KINDS[span.kind], start_time_unix_nano=span.start_time or 0,
            end_time_unix_nano=span.end_time or 0,
            flags=_HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0),
            status=Status(code=_STATUS[status.status_code], message=status.description or ""))
        attribute = self._attribute
        return fixed.SerializeToString() + b"".join(
            attribute(key, value) for key, value in (span.attributes or {}).items())

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        groups: dict[tuple[int, int], tuple[ReadableSpan, ScopeSpans]] = {}
        request = ExportTraceServiceRequest()
        for span in spans:
            group = (id(span.resource), id(span.instrumentation_scope))
            found = groups.get(group)
            if found is None:
                resource_spans = request.resource_spans.add()
                resource_spans.CopyFrom(ResourceSpans(resource=Resource(attributes=[
                    KeyValue(key=k, value=any_value(v)) for k, v in span.resource.attributes.items()])))
                scope_spans = resource_spans.scope_spans.add()
                scope = span.instrumentation_scope
                if scope is not None:
                    scope_spans.scope.CopyFrom(InstrumentationScope(name=scope.name, version=scope.version or ""))
                found = groups[group] = (span, scope_spans)
            found[1].spans.add().MergeFromString(self.span(span))
        return request.SerializeToString()


class OtlpHttpExporter(SpanExporter):
    """OTLP/HTTP protobuf to ``endpoint`` with ``SpanEncoder``."""

    def __init__(self, endpoint: str, headers: dict[str, str], timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.headers.update({**headers, "Content-Type": "application/x-protobuf"})
        self._encoder = SpanEncoder()
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        body = self._encoder.encode(spans)
        deadline = time.monotonic() + self.timeout_s
        delay = 0.5
        while True:
            left = deadline - time.monotonic()
            try:
                answer = self._session.post(self.endpoint, data=body, timeout=max(left, 0.1))
                if answer.ok:
                    return SpanExportResult.SUCCESS
                retry, why = answer.status_code in _RETRY_STATUS, f"HTTP {answer.status_code}"
            except requests.RequestException as exc:
                retry, why = True, type(exc).__name__
            if not retry or time.monotonic() + delay >= deadline:
                log.warning("dropped %d spans: the collector at %s answered %s", len(spans), self.endpoint, why)
                return SpanExportResult.FAILURE
            time.sleep(delay)  # the processor's own thread: no request waits on it
            delay *= 2

    def shutdown(self) -> None:
        self._closed = True
        self._session.close()
