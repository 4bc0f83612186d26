"""OTLP/HTTP protobuf export of the gateway's spans, from a thread of its own, encoded at a fraction of the SDK's cost.

The request path hands over each finished request as one tuple of plain span records (``SpanRecord``): no
SDK span objects, no span processor call per span. ``BatchExporter``'s thread takes them from a bounded queue
(beyond ``max_queue`` spans they are dropped and counted, never waited for), every ``interval_s`` or as
soon as a batch is full, encodes and posts them. In a gateway it runs in the exporter process
(gateway/trace_export.py), which takes the encoding off the worker's GIL; tests and benches that read the
bytes run it in process.

The OTLP exporter's generic encoder builds a protobuf message per span and per attribute (~50 µs a span
here, more than the request path's whole tracing cost). A span's bytes are its fixed fields (ids, name,
kind, times, status, flags), written here with their tags (trace.proto's wire format), followed by one
length-delimited entry per attribute. A string, bool, int or float attribute is written here too (a protobuf
message per attribute costs several times more); any other value goes through protobuf. The entries repeat
across requests (method, path, tenant, alias, deployment, status...), so each ``(key, value)`` is encoded
once and its bytes reused; only the varying ones (request id, cost, times) are encoded per span. A read-only
attribute mapping (``MappingProxyType``: a deployment's, shared by every request's upstream span) is encoded
once as a whole. Events, links and trace state are not encoded: the gateway's spans have none. Tests compare
the result with the SDK encoder's, span by span, and each kind of value with protobuf's bytes.

Imported by gateway/tracing.py whatever the config: protobuf and ``requests`` are imported only when an
exporter is made (tracing on). Posted with ``requests`` (the OTLP exporter's own HTTP client library); a collector answering 429, 502,
503 or 504, or not answering, is tried again with backoff within the timeout, and the batch is dropped after
that (traces are never worth holding requests for).
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

# OTLP span kinds and status codes (trace.proto's enums)
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
# OTLP span flags: bit 8 says bit 9 is set, bit 9 says the parent is remote
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_RETRY_STATUS = frozenset({429, 502, 503, 504})
MAX_CACHED = 8192
log = logging.getLogger(__name__)


class SpanRecord(NamedTuple):
    """One finished span, as the request path leaves it (``parent_id`` 0: no parent)."""

    name: str
    span_id: int
    parent_id: int
    parent_remote: bool
    kind: int
    start: int
    end: int
    status: int
    message: str
    attributes: Mapping[str, Any]


Trace = tuple[int, Sequence[SpanRecord]]  # a request's trace id and its spans


def any_value(value: Any) -> Any:
    """An attribute value as OTLP's ``AnyValue``."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

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


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
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
_FIRST, _SECOND = (
    b"\x0a",
    b"\x12",
)  # field 1 and 2, length-delimited: resource / scope, then the list under it
# an attribute: Span.attributes (9) holds a KeyValue: key (1), value (2) an AnyValue of one of string (1),
# bool (2), int (3, an int64 as a varint of its two's complement), double (4, fixed64)
_ATTRIBUTE, _KEY, _VALUE = b"\x4a", b"\x0a", b"\x12"
_STRING, _TRUE, _FALSE, _INT, _DOUBLE = b"\x0a", b"\x10\x01", b"\x10\x00", b"\x18", b"\x21"
_DOUBLE_BYTES = struct.Struct("<d")
_SPAN_ONLY = struct.Struct(">Q")  # the span id (after its tag: trace_prefix)
_SPAN_AND_PARENT = struct.Struct(">Q2sQ")  # the span id, the parent's tag and the parent's span id
_TIMES = struct.Struct("<cQcQ")  # start and end, each its tag and a fixed64
# status (none: an empty message) and flags, for a local parent (or none) and for a remote one
_UNSET_TAILS = (
    _field(_STATUS_FIELD, b"") + _FLAGS + _FIXED32.pack(_HAS_IS_REMOTE),
    _field(_STATUS_FIELD, b"") + _FLAGS + _FIXED32.pack(_HAS_IS_REMOTE | _IS_REMOTE),
)
_KINDS = [_KIND + _varint(kind) for kind in range(6)]
_INT64 = range(-(2**63), 2**63)


def _value(value: Any) -> bytes | None:
    """An AnyValue's bytes for a string, bool, int or float (None for anything else: protobuf encodes it)."""
    kind = type(value)
    if kind is str:
        data = value.encode("utf-8", "surrogatepass")
        return _STRING + _varint(len(data)) + data
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is int and value in _INT64:
        return _INT + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if kind is float:
        return _DOUBLE + _DOUBLE_BYTES.pack(value)
    return None


class SpanEncoder:
    """Traces to one ``ExportTraceServiceRequest``'s bytes, under one resource and instrumentation scope.
    Not thread-safe: one per exporter thread."""

    def __init__(self, resource: Mapping[str, Any], scope: str) -> None:
        from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        self._span, self._key_value = Span, KeyValue
        self._attributes: dict[tuple[str, type, Any], bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._shared: dict[int, tuple[Mapping[str, Any], bytes]] = {}
        self._names: dict[str, bytes] = {}
        self._doubles: dict[str, bytes] = {}
        self._resource = _field(
            _FIRST,
            Resource(
                attributes=[KeyValue(key=k, value=any_value(v)) for k, v in resource.items()]
            ).SerializeToString(),
        )
        self._scope = _field(_FIRST, InstrumentationScope(name=scope).SerializeToString())

    def attribute(self, key: str, value: Any) -> bytes:
        """One attribute's entry in a span (its tag, length and ``KeyValue``), from the cache when the same
        ``(key, value)`` came before."""
        cache_key = (key, type(value), value if not isinstance(value, list) else tuple(value))
        found = self._attributes.get(cache_key)
        if found is not None:
            return found
        encoded = _value(value)
        if encoded is not None:  # written here: a protobuf message per attribute costs several times more
            found = self._entry(key, encoded)
            if type(value) is not float:  # a float (a cost, a time) rarely comes again
                if len(self._attributes) >= MAX_CACHED:
                    self._attributes.clear()
                self._attributes[cache_key] = found
            return found
        # any other value: a one-attribute Span serializes to exactly that attribute's repeated-field entry
        found = self._span(attributes=[self._key_value(key=key, value=any_value(value))]).SerializeToString()
        if len(self._attributes) >= MAX_CACHED:  # varying values fill it: start again
            self._attributes.clear()
        self._attributes[cache_key] = found
        return found

    def attributes(self, attributes: Mapping[str, Any]) -> bytes:
        """A span's attribute entries; a read-only mapping's (``MappingProxyType``: shared by many spans) are
        encoded once and reused while it lives."""
        if type(attributes) is MappingProxyType:  # shared by every request (a deployment's): encoded once
            shared = self._shared.get(id(attributes))
            if shared is None or shared[0] is not attributes:
                if len(self._shared) >= MAX_CACHED:
                    self._shared.clear()
                encoded = b"".join([self.attribute(key, value) for key, value in attributes.items()])
                shared = self._shared[id(attributes)] = (attributes, encoded)  # held: its id stays its own
            return shared[1]
        attribute = self.attribute
        return b"".join([attribute(key, value) for key, value in attributes.items()])

    def frame(
        self,
        prefix: bytes,
        span_id: int,
        parent_id: int,
        parent_remote: bool,
        name: str,
        kind: int,
        start: int,
        end: int,
        status: int,
        message: str,
        entries: bytes,
    ) -> bytes:
        """One span's message: ``prefix`` (``trace_prefix``: its trace id and the span id's tag), its fixed
        fields and its attribute ``entries`` (``attribute``), last."""
        encoded_name = self._names.get(name)
        if encoded_name is None:
            if len(self._names) >= MAX_CACHED:
                self._names.clear()
            encoded_name = self._names[name] = _field(_NAME, name.encode())
        if status or message:  # the status, then the flags (what follows an unset status)
            tail = (
                _field(
                    _STATUS_FIELD,
                    (_field(_STATUS_MESSAGE, message.encode()) if message else b"")
                    + (_STATUS_CODE + _varint(status) if status else b""),
                )
                + _UNSET_TAILS[parent_remote][2:]
            )
        else:
            tail = _UNSET_TAILS[parent_remote]
        return b"".join(
            (
                prefix,
                _SPAN_AND_PARENT.pack(span_id, _PARENT_ID, parent_id)
                if parent_id
                else _SPAN_ONLY.pack(span_id),
                encoded_name,
                _KINDS[kind] if 0 <= kind < len(_KINDS) else _KIND + _varint(kind),
                _TIMES.pack(_START, start, _END, end),
                tail,
                entries,
            )
        )

    def double(self, key: str, value: float) -> bytes:
        """A float attribute whose value seldom comes again (a cost, a time): encoded, not cached."""
        head = self._doubles.get(key)
        if head is None:
            head = self._doubles[key] = self._entry(key, _DOUBLE + bytes(8))[:-8]
        return head + _DOUBLE_BYTES.pack(value)

    def unique(self, key: str, value: str) -> bytes:
        """A string attribute whose value does not come again (a request id): encoded, not cached."""
        data = value.encode("utf-8", "surrogatepass")
        return self._entry(key, _STRING + _varint(len(data)) + data)

    def _entry(self, key: str, encoded: bytes) -> bytes:
        prefix = self._keys.get(key)
        if prefix is None:
            if len(self._keys) >= MAX_CACHED:
                self._keys.clear()
            data = key.encode("utf-8", "surrogatepass")
            prefix = self._keys[key] = _KEY + _varint(len(data)) + data + _VALUE
        entry = prefix + _varint(len(encoded)) + encoded
        return _ATTRIBUTE + _varint(len(entry)) + entry

    def span(self, trace_id: bytes, span: SpanRecord) -> bytes:
        return self.frame(
            _TRACE_ID + trace_id + _SPAN_ID,
            span.span_id,
            span.parent_id,
            span.parent_remote,
            span.name,
            span.kind,
            span.start,
            span.end,
            span.status,
            span.message,
            self.attributes(span.attributes),
        )

    def encode(self, traces: Sequence[Trace]) -> bytes:
        return self.request(
            [
                self.span(trace_id.to_bytes(16, "big"), span)
                for trace_id, records in traces
                for span in records
            ]
        )

    def request(self, spans: Sequence[bytes]) -> bytes:
        """The ``ExportTraceServiceRequest`` of span messages (``frame``), under this resource and scope."""
        body = b"".join([_SECOND + _varint(len(span)) + span for span in spans])
        scope_spans = len(self._scope) + len(body)
        head = _SECOND + _varint(scope_spans)
        resource_spans = len(self._resource) + len(head) + scope_spans
        return b"".join((_FIRST, _varint(resource_spans), self._resource, head, self._scope, body))


def trace_prefix(trace_id: int) -> bytes:
    """What starts each span message of a trace (``SpanEncoder.frame``): its id and the span id's tag."""
    return _TRACE_ID + trace_id.to_bytes(16, "big") + _SPAN_ID


class HttpSender:
    """Posts encoded export requests to an OTLP/HTTP ``endpoint``."""

    def __init__(self, endpoint: str, headers: Mapping[str, str], timeout_s: float) -> None:
        import requests

        self._failed = requests.RequestException
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.headers.update({**headers, "Content-Type": "application/x-protobuf"})

    def __call__(self, body: bytes) -> bool:
        deadline = time.monotonic() + self.timeout_s
        delay = 0.5
        while True:
            left = deadline - time.monotonic()
            try:
                answer = self._session.post(self.endpoint, data=body, timeout=max(left, 0.1))
                if answer.ok:
                    return True
                retry, why = answer.status_code in _RETRY_STATUS, f"HTTP {answer.status_code}"
            except self._failed as exc:
                retry, why = True, type(exc).__name__
            if not retry or time.monotonic() + delay >= deadline:
                log.warning("dropped a batch of spans: the collector at %s answered %s", self.endpoint, why)
                return False
            time.sleep(delay)  # the exporter's own thread: no request waits on it
            delay *= 2

    def close(self) -> None:
        self._session.close()


class BatchExporter:
    """A bounded queue of finished traces and the thread that encodes and sends them.

    ``add`` is called from one thread (the event loop's) and takes no lock: a deque append and counters that
    only that thread writes (``_added``, ``dropped``), read against the ones only the export thread writes
    (``_taken``, ``_sent``). The export thread sleeps until ``interval_s`` has passed or a batch is full; only
    then does ``add`` take the lock, to wake it: a lock and a condition per request cost the loop more than
    the append itself."""

    def __init__(
        self,
        encoder: SpanEncoder,
        send: Callable[[bytes], bool],
        *,
        max_queue: int,
        interval_s: float,
        max_batch: int = 4096,
        on_sent: Callable[[int, bool], None] | None = None,
    ) -> None:
        """``on_sent(spans, ok)``: called on the export thread after each batch was posted (or failed to:
        the exporter process reports both to the gateway's worker, gateway/trace_export.py)."""
        self.encoder, self.send, self.on_sent = encoder, send, on_sent
        self.max_queue, self.interval_s, self.max_batch = max_queue, interval_s, max_batch
        self.dropped = 0  # spans refused by a full queue
        self._queue: collections.deque[tuple[int, Any]] = collections.deque()  # (spans, trace)
        self._added = 0  # spans queued so far (the adding thread's)
        self._taken = 0  # spans taken off the queue (the export thread's)
        self._sent = 0  # spans sent, or failed to (the export thread's)
        self._woken = False  # the export thread was told a batch is full
        self._flushing = False
        self._stopping = False
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="trace-export", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Spans queued or being sent."""
        return self._added - self._sent

    @property
    def _queued(self) -> int:
        """Spans queued, not yet taken by the export thread."""
        return self._added - self._taken

    def add(self, trace: Any, count: int | None = None) -> None:
        """Queue a trace of ``count`` spans (``len(trace[1])`` by default: a ``Trace``), or drop it when the
        queue is full. On the event loop, without a lock unless a batch has just filled."""
        if count is None:
            count = len(trace[1])
        added = self._added + count
        if added - self._sent > self.max_queue or self._stopping:
            self.dropped += count
            return
        self._queue.append((count, trace))
        self._added = added
        if added - self._taken >= self.max_batch and not self._woken:
            with self._lock:
                self._woken = True
                self._lock.notify_all()

    def _take(self) -> tuple[list[Any], int, bool]:
        with self._lock:
            if not self._stopping and not self._flushing and self._queued < self.max_batch:
                self._lock.wait(self.interval_s)
            self._woken = False
            batch: list[Any] = []
            count = 0
            queue = self._queue
            while queue and count < self.max_batch:
                spans, trace = queue.popleft()
                batch.append(trace)
                count += spans
            self._taken += count
            return batch, count, self._stopping and not queue

    def _run(self) -> None:
        while True:
            batch, count, last = self._take()
            if batch:
                ok = False
                try:
                    ok = self.send(self.encoder.encode(batch))
                except Exception:  # a bug in encoding must not stop the thread
                    log.exception("trace export failed")
                if self.on_sent is not None:
                    self.on_sent(count, ok)
            with self._lock:
                self._sent += count
                if not self._queue:
                    self._flushing = False
                self._lock.notify_all()
            if last:
                return

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Sends what is queued now; True once it has gone (or failed to)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._flushing = True
            self._lock.notify_all()
            while self._added - self._sent > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def shutdown(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout_s)
