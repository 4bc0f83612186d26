"""OTLP/HTTP protobuf export of finished spans, encoded for the gateway's spans at a fraction of the SDK's cost.

The OTLP exporter's generic encoder builds a protobuf message per span and per attribute (~37 µs a span
here, more than the request path's whole tracing cost). A span's bytes are its fixed fields (ids, name,
kind, times, status, flags), written here with their tags, followed by one length-delimited entry per
attribute. The entries repeat across requests (method, path, tenant, alias, deployment, status...), so
each ``(key, value)`` is encoded once by protobuf and its bytes reused; only the varying ones (request id,
tokens, cost) are encoded per span. Events, links and trace state are not encoded: the gateway's spans have
none.

Sent from the batch processor's thread with ``requests`` (the OTLP exporter's own HTTP client); a
collector answering 429, 502, 503 or 504, or not answering, is tried again with backoff within the
timeout, and the batch is dropped after that (traces are never worth holding requests for).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Sequence
from typing import Any

import requests
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
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


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    return tag + _varint(len(payload)) + payload


_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
# tags: field number << 3 | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32), trace.proto's numbers
_TRACE_ID, _SPAN_ID, _PARENT_ID, _NAME, _KIND = b"\x0a\x10", b"\x12\x08", b"\x22\x08", b"\x2a", b"\x30"
_START, _END, _STATUS_FIELD, _FLAGS = b"\x39", b"\x41", b"\x7a", b"\x85\x01"
_STATUS_MESSAGE, _STATUS_CODE = b"\x12", b"\x18"
_FIRST, _SECOND = b"\x0a", b"\x12"  # field 1 and 2, length-delimited: resource / scope, then the list under it


class SpanEncoder:
    """Finished spans to one ``ExportTraceServiceRequest``'s bytes, written field by field (the wire format of
    opentelemetry-proto's trace.proto; tests compare the result with the SDK encoder's). Not thread-safe: one
    per exporter."""

    def __init__(self) -> None:
        self._attributes: dict[tuple[str, type, Any], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._groups: dict[tuple[int, int], tuple[Any, Any, bytes, bytes]] = {}

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
        name = self._names.get(span.name)
        if name is None:
            if len(self._names) >= _MAX_CACHED:
                self._names.clear()
            name = self._names[span.name] = _field(_NAME, span.name.encode())
        code = _STATUS[status.status_code]
        status_bytes = (_field(_STATUS_MESSAGE, status.description.encode()) if status.description else b"") + \
            (_STATUS_CODE + _varint(code) if code else b"")
        attribute = self._attribute
        return b"".join((
            _TRACE_ID, context.trace_id.to_bytes(16, "big"), _SPAN_ID, context.span_id.to_bytes(8, "big"),
            _PARENT_ID + parent.span_id.to_bytes(8, "big") if parent is not None else b"", name,
            _KIND, _varint(_KINDS[span.kind]), _START, _FIXED64.pack(span.start_time or 0),
            _END, _FIXED64.pack(span.end_time or 0), _field(_STATUS_FIELD, status_bytes),
            _FLAGS, _FIXED32.pack(_HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)),
            *[attribute(key, value) for key, value in (span.attributes or {}).items()]))

    def _group(self, span: ReadableSpan) -> tuple[int, int]:
        """The span's resource and scope, encoded once (the objects kept, so their ids stay theirs)."""
        group = (id(span.resource), id(span.instrumentation_scope))
        if group not in self._groups:
            resource = Resource(attributes=[KeyValue(key=k, value=any_value(v))
                                            for k, v in span.resource.attributes.items()]).SerializeToString()
            scope = span.instrumentation_scope
            scope_bytes = b"" if scope is None else _field(_FIRST, InstrumentationScope(
                name=scope.name, version=scope.version or "").SerializeToString())
            if len(self._groups) > 64:
                self._groups.clear()
            self._groups[group] = (span.resource, scope, _field(_FIRST, resource), scope_bytes)
        return group

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        by_group: dict[tuple[int, int], list[bytes]] = {}
        for span in spans:
            by_group.setdefault(self._group(span), []).append(_field(_SECOND, self.span(span)))
        out = []
        for group, encoded in by_group.items():
            _, _, resource, scope = self._groups[group]
            scope_spans = _field(_SECOND, scope + b"".join(encoded))
            out.append(_field(_FIRST, resource + scope_spans))
        return b"".join(out)


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
