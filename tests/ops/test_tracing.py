"""OpenTelemetry traces: a span per request with its stages as children, the GenAI attributes, the client's
traceparent continued and sent upstream, the trace id in the log line; exported over OTLP/HTTP to a real
receiver. Off by default, with no OpenTelemetry SDK loaded."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import cast

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import TRACING
from gateway.keys import GATEWAY
from tests.conftest import KEY, LOG_PATH, config_text
from tests.harness import ServerThread
from tests.ops.gateway_process import ROOT, poll

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"


@pytest.fixture
def traced(receiver, upstream, start_gateway) -> tuple[ServerThread, InMemorySpanExporter]:
    # the receiver first: it then stops after the gateway, whose exporter sends what it holds on its way out
    # (a receiver already gone was retried with backoff for 7.5 s at every teardown)
    models = f"""  - name: flaky
    retry: {{attempts: 2, backoff_base_s: 0}}
    deployments:
      - provider: openai-compatible
        model: error-503
        api_base: {upstream[0].url}/v1
        api_key: x
  - name: slow
    deployments:
      - provider: openai-compatible
        model: slow-stream
        api_base: {upstream[0].url}/v1
        api_key: x"""
    text = (
        config_text(upstream[0].url, models)
        + f"""
tracing:
  enabled: true
  endpoint: {receiver.server.url}/v1/traces
  service_name: gateway-under-test
policies:
  limits: {{max_concurrency: 1}}
  max_wait_s: 30
"""
    )
    upstream[1].api_key = None  # the flaky alias's deployments use their own key
    gateway = start_gateway(text)
    assert gateway.app is not None
    exporter = InMemorySpanExporter()
    gateway.app[TRACING].add_span_processor(SimpleSpanProcessor(exporter))
    return gateway, exporter


def by_name(exporter: InMemorySpanExporter, trace_id: int) -> dict[str, list]:
    out: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        if span.context.trace_id == trace_id:
            out.setdefault(span.name, []).append(span)
    return out


def test_a_request_is_one_trace_continuing_the_clients(traced, upstream, receiver):
    gateway, exporter = traced
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            max_tokens=7,
            temperature=0.5,
            messages=[{"role": "user", "content": "hello trace"}],
            extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"},
        )
    answer = raw.parse()
    assert answer.usage is not None
    trace_id = int(CLIENT_TRACE, 16)
    spans = poll(lambda: (s := by_name(exporter, trace_id)).get("chat chat") and s, "the request's span")
    [root] = spans["chat chat"]
    assert root.kind is SpanKind.SERVER and root.parent is not None
    assert root.parent.span_id == int(CLIENT_PARENT, 16) and root.parent.is_remote
    attributes = root.attributes
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == "chat"
    assert attributes["gen_ai.request.max_tokens"] == 7 and attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert attributes["http.response.status_code"] == 200 and attributes["gateway.tenant"] == "acme"
    assert attributes["gateway.request_id"] == raw.headers["x-request-id"]
    for stage in ("admission", "cache", "upstream"):
        [span] = spans[stage]
        assert span.parent.span_id == root.context.span_id, stage
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, stage
    [attempt] = spans["upstream"]
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.attributes["gen_ai.provider.name"] == "openai-compatible"
    assert attempt.attributes["gen_ai.request.model"] == "fake-model"
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["http.response.status_code"] == 200
    # the upstream was called within the same trace, parented on the attempt
    sent = upstream[1].requests[-1].headers["traceparent"]
    assert sent == f"00-{CLIENT_TRACE}-{attempt.context.span_id:016x}-01"
    # the log line names the trace
    line = poll(
        lambda: [
            json.loads(x) for x in LOG_PATH.read_text().splitlines() if raw.headers["x-request-id"] in x
        ],
        "the log line",
    )[-1]
    assert line["trace_id"] == CLIENT_TRACE

    # and the same spans reached a real OTLP/HTTP receiver (the batch processor flushed on demand)
    gateway.app[TRACING].force_flush()
    received = poll(
        lambda: [(r, s) for r, s in receiver.spans() if s.trace_id.hex() == CLIENT_TRACE],
        "spans at the OTLP receiver",
    )
    names = {s.name for _, s in received}
    assert {"chat chat", "admission", "cache", "upstream"} <= names
    assert all(r["service.name"] == "gateway-under-test" for r, _ in received)
    [remote_root] = [s for _, s in received if s.name == "chat chat"]
    assert remote_root.parent_span_id.hex() == CLIENT_PARENT
    assert {a.key for a in remote_root.attributes} >= {"gen_ai.operation.name", "gen_ai.usage.input_tokens"}


def test_a_trace_the_client_did_not_sample_makes_no_spans_but_still_propagates(traced, upstream):
    gateway, exporter = traced
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=[{"role": "user", "content": "not sampled"}],
            extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00"},
        )
    line = poll(
        lambda: [
            json.loads(x) for x in LOG_PATH.read_text().splitlines() if raw.headers["x-request-id"] in x
        ],
        "the log line",
    )[-1]
    assert line["trace_id"] == CLIENT_TRACE
    sent = upstream[1].requests[-1].headers["traceparent"]
    assert sent.startswith(f"00-{CLIENT_TRACE}-") and sent.endswith("-00")
    # a sampled request after it is exported; the unsampled one never is
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "sampled"}])
    poll(
        lambda: any(s.name == "chat chat" for s in exporter.get_finished_spans()),
        "the sampled request's span",
    )
    assert by_name(exporter, int(CLIENT_TRACE, 16)) == {}


def test_each_upstream_attempt_is_a_span_and_a_failed_one_says_so(traced):
    gateway, exporter = traced
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 503
    [root] = poll(
        lambda: [s for s in exporter.get_finished_spans() if s.name == "chat flaky"], "the request's span"
    )
    assert root.status.status_code is StatusCode.ERROR and root.attributes["http.response.status_code"] == 503
    attempts = sorted(by_name(exporter, root.context.trace_id)["upstream"], key=lambda s: s.start_time)
    assert len(attempts) == 2  # the first try and one retry
    for attempt in attempts:
        assert attempt.parent.span_id == root.context.span_id
        assert attempt.status.status_code is StatusCode.ERROR
        assert attempt.attributes["http.response.status_code"] == 503
    assert attempts[0].end_time <= attempts[1].start_time


def test_a_request_waiting_for_capacity_has_a_queue_span(traced):
    gateway, exporter = traced
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        stream = client.chat.completions.create(
            model="slow", stream=True, messages=[{"role": "user", "content": "one two three four"}]
        )
        first = next(iter(stream))  # holding the tenant's one slot
        assert first is not None
        waited: list[str] = []
        second = threading.Thread(
            target=lambda: waited.append(
                client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "after"}])
                .choices[0]
                .message.content
                or ""
            )
        )
        second.start()
        admission = gateway.app[GATEWAY].pipeline.admission
        poll(
            lambda: admission.queue is not None and admission.queue.waiting("acme"),
            "the second request queued",
        )
        for _ in stream:
            pass
        second.join(timeout=60)
    assert waited == ["Echo: after"]
    root = poll(lambda: [s for s in exporter.get_finished_spans() if s.name == "chat chat"], "the span")[-1]
    spans = by_name(exporter, root.context.trace_id)
    [admission] = spans["admission"]
    [queue] = spans["queue"]
    assert queue.parent.span_id == admission.context.span_id
    assert admission.start_time <= queue.start_time <= queue.end_time <= admission.end_time


def test_tracing_is_off_by_default_and_loads_no_sdk():
    """No middleware and none of the trace SDK or exporter (redis-py itself imports the API and the metrics SDK)."""
    script = """
import sys
from gateway.app import TRACING, build_app
from gateway.config import load_config
app = build_app(load_config())
assert TRACING not in app
print("RESULT", len([m for m in app.middlewares if "tracing" in getattr(m, "__module__", "")]), sorted(m for m in sys.modules
                                            if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].split() == ["RESULT", "0", "[]"]


@pytest.mark.parametrize(
    "header",
    [
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",
        f"00-{CLIENT_TRACE}-{'0' * 16}-01",
        f"00-{CLIENT_TRACE.upper()}-{CLIENT_PARENT}-01",
        "garbage",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(traced, upstream, header):
    gateway, exporter = traced
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=[{"role": "user", "content": "bad parent"}],
            extra_headers={"traceparent": header},
        )
    assert raw.parse().choices[0].message.content == "Echo: bad parent"
    [root] = poll(
        lambda: [
            s
            for s in exporter.get_finished_spans()
            if s.attributes.get("gateway.request_id") == raw.headers["x-request-id"]
        ],
        "the span",
    )
    assert root.parent is None and f"{root.context.trace_id:032x}" != CLIENT_TRACE
    assert upstream[1].requests[-1].headers["traceparent"].split("-")[1] == f"{root.context.trace_id:032x}"


def test_the_export_encoding_matches_the_sdk_encoders(traced, receiver):
    """What reached the OTLP receiver (gateway/otlp.py's encoding, cached attribute entries) decodes to the same
    spans as the SDK's OTLP encoder makes of the in-process processor's copies of them."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    gateway, exporter = traced
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        for text in ("one", "two"):  # the second request's entries come from the cache
            client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": text}],
                extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"},
            )
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "x"}])
    finished = poll(
        lambda: (
            (s := exporter.get_finished_spans()) and sum(x.name.startswith("chat ") for x in s) == 3 and s
        ),
        "three requests' spans",
    )
    gateway.app[TRACING].force_flush()
    received = {
        s.span_id: (r, s)
        for r, s in poll(
            lambda: len(receiver.spans()) >= len(finished) and receiver.spans(), "the spans at the receiver"
        )
    }
    sdks = ExportTraceServiceRequest()
    sdks.ParseFromString(encode_spans(finished).SerializeToString())
    theirs = sdks.resource_spans[0]
    assert len(theirs.scope_spans[0].spans) == len(finished) >= 9
    for span in theirs.scope_spans[0].spans:
        resource, mine = received[span.span_id]
        assert mine == span, (mine, span)
        assert resource == {a.key: a.value.string_value for a in theirs.resource.attributes}
    assert any(s.status.code == s.status.STATUS_CODE_ERROR for _, s in received.values())
    assert any(s.flags & 0x200 for _, s in received.values())  # the client's remote parent
    exports = receiver.exports
    assert {e.resource_spans[0].scope_spans[0].scope.name for e in exports} == {"llm-gateway"}


def test_a_collector_slower_than_the_traffic_drops_spans_instead_of_holding_requests():
    """The export queue is bounded: with the collector stuck, spans past max_queue are dropped and counted,
    adding a trace never waits, and what was queued goes out once the collector answers."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from gateway.otlp import BatchExporter, SpanEncoder, SpanRecord

    release = threading.Event()
    bodies: list[bytes] = []

    def stuck_collector(body: bytes) -> bool:
        release.wait(60)
        bodies.append(body)
        return True

    exporter = BatchExporter(
        SpanEncoder({"service.name": "t"}, "llm-gateway"),
        stuck_collector,
        max_queue=12,
        interval_s=0.01,
        max_batch=4,
    )
    span = SpanRecord("stage", 1, 0, False, 1, 1, 2, 0, "", {"k": "v"})
    try:
        exporter.add((1, [span] * 4))
        poll(lambda: exporter._queued == 0, "the first batch taken by the stuck send")
        for trace_id in range(2, 7):
            exporter.add((trace_id, [span] * 4))  # 4 in flight + 4 + 4 queued: the rest dropped
        assert exporter.dropped == 12
        release.set()
        assert exporter.force_flush(30)
    finally:
        release.set()
        exporter.shutdown()
    sent = []
    for body in bodies:
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        sent += [s.trace_id for s in export.resource_spans[0].scope_spans[0].spans]
    assert sorted({int.from_bytes(t, "big") for t in sent}) == [1, 2, 3] and len(sent) == 12


def _sent_tracestate(gateway, upstream, headers: Sequence[tuple[str, str | bytes]]) -> str | None:
    """The tracestate the upstream got for a chat request with ``headers`` (which must still be answered)."""
    answer = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "state"}]},
        # a header that is not ASCII goes as bytes (httpx takes str or bytes pairs alike)
        headers=cast("list[tuple[str, str]]", [("Authorization", f"Bearer {KEY}"), *headers]),
        timeout=20,
    )
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "Echo: state"
    seen = upstream[1].requests[-1].headers
    assert seen["traceparent"]
    return seen.get("tracestate")


PARENT = ("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01")


def test_the_clients_tracestate_goes_upstream_with_its_traceparent(traced, upstream):
    gateway, _ = traced
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "state"}],
            extra_headers={
                "traceparent": PARENT[1],
                "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7",
            },
        )
    assert upstream[1].requests[-1].headers["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    # several header lines are one list; a multi-tenant key and empty members are fine
    lines = [PARENT, ("tracestate", "a=1,,"), ("tracestate", "t0@sys=x y")]
    assert _sent_tracestate(gateway, upstream, lines) == "a=1,t0@sys=x y"
    # without a valid traceparent the gateway starts its own trace: the client's tracestate is not its
    assert _sent_tracestate(gateway, upstream, [("traceparent", "garbage"), ("tracestate", "a=1")]) is None


_INVALID_TRACESTATES: list[str | bytes] = [
    ",".join(f"k{i}=v" for i in range(33)),  # over 32 members
    "Congo=1",  # a key is lowercase
    "a=b=c",  # '=' in a value
    "a=1,a=2",  # a key twice
    "a=1 ,b=" + "v" * 257,  # a value over 256 characters
    "k" + "x" * 256 + "=1",  # a key over 256 characters
    "a=ok\u00e9".encode("latin-1"),  # not ASCII
    "a=",  # an empty value
]


def test_an_invalid_tracestate_is_dropped_and_the_request_still_answered(traced, upstream):
    gateway, _ = traced
    for state in _INVALID_TRACESTATES:
        assert _sent_tracestate(gateway, upstream, [PARENT, ("tracestate", state)]) is None, state


def test_a_tracestate_over_512_characters_loses_its_long_members_first_then_the_last(traced, upstream):
    gateway, _ = traced
    long = "big=" + "v" * 200
    small = [f"m{i}=" + "v" * 40 for i in range(12)]
    sent = _sent_tracestate(
        gateway, upstream, [PARENT, ("tracestate", ",".join([small[0], long, *small[1:]]))]
    )
    assert len(",".join(small)) > 512 >= len(",".join(small[:11]))
    assert sent == ",".join(small[:11])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "chat",
        "é中🙂",
        True,
        False,
        0,
        1,
        127,
        128,
        -1,
        2**63 - 1,
        -(2**63),
        2**63,  # past int64: protobuf's own path (it refuses it there too)
        0.0,
        -0.0,
        1e-300,
        float("inf"),
        ["a", "b"],
        [1, 2],
    ],
)
def test_each_attribute_value_is_encoded_as_protobuf_encodes_it(value):
    """The encoder writes string, bool, int and float attributes itself; the bytes equal protobuf's, in an
    attribute dict of the request's own and in a shared (read-only) one, the second time from its cache too."""
    from types import MappingProxyType

    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from gateway.otlp import SpanEncoder, SpanRecord, any_value

    try:
        expected = Span(attributes=[KeyValue(key="k.é", value=any_value(value))]).SerializeToString()
    except ValueError:  # an int past int64: protobuf refuses it, and so does the encoder
        with pytest.raises(ValueError):
            SpanEncoder({}, "s").span(
                b"\0" * 16, SpanRecord("n", 1, 0, False, 1, 1, 2, 0, "", {"k.é": value})
            )
        return
    encoder = SpanEncoder({}, "s")
    shared = MappingProxyType({"k.é": value})
    for attributes in ({"k.é": value}, shared, shared, {"k.é": value}):
        raw = encoder.span(b"\1" * 16, SpanRecord("n", 1, 0, False, 1, 1, 2, 0, "", attributes))
        assert raw.endswith(expected)  # the attributes are the span's last field
        assert list(Span.FromString(raw).attributes) == list(Span.FromString(expected).attributes)


def test_a_request_trace_is_encoded_as_its_span_records_are():
    """The exporter's thread writes a request's spans straight from its trace, reusing the bytes of what repeats;
    they equal the generic encoder's bytes of the span records made of it (what in-process processors get, and
    what the receiver test above compares with the SDK's), for traces varying in every field, and again from
    the caches. Equal request fields of other types (1, 1.0, True) are encoded as their own."""
    import random
    from types import MappingProxyType

    from gateway.otlp import SpanEncoder
    from gateway.tracing import RequestEncoder, deployment_attributes, records

    rng = random.Random(21)
    keys = [
        None,
        ("chat/0", "openai-compatible", "m", "http://127.0.0.1:9/v1", "chat"),
        ("e/1", "local", "tiny", None, ""),
    ]

    def pick(*options):
        return rng.choice(options)

    def stage(n: int):
        name = pick("admission", "cache", "queue", "upstream", "engine")
        started = (name, rng.getrandbits(64) or 1, rng.getrandbits(64) or 1, n, pick(*keys))
        return *started, n + 5, pick(None, 200, 503, 0), pick(None, "boom", "ended with the request")

    def trace(n: int):
        fields = pick(
            None,
            (
                *(pick(None, 1, 1.0, True, 0.5, -3, [1], "x") for _ in range(6)),
                pick(True, False, None, "yes"),
            ),
        )
        return (
            *(rng.getrandbits(128) or 1, tuple(stage(n) for _ in range(rng.randrange(4)))),
            *(rng.getrandbits(64) or 1, pick(0, rng.getrandbits(64) or 1), n, n + 9, "POST"),
            *(pick("/v1/chat/completions", "/v1/other"), f"req-{n}", pick("", "chat"), fields),
            *(pick("-", "chat", "é"), pick(200, 400, 429, 499, 500, 503), pick("acme", "-"), pick("k1", "-")),
            *(pick(None, 0, 12), pick(None, 30), pick(None, "chat/0"), pick(None, "miss", "hit-exact")),
            *(pick(None, 0.0, 0.00012, 0), pick(None, 0.01), pick(None, "", "upstream failed")),
        )

    traces = [trace(n) for n in range(400)]
    for value in (1, 1.0, True, 1, 1.0, True):  # equal as keys, not as attributes
        traces.append((*trace(0)[:10], (value, *[None] * 5, False), "chat", 200, "acme", "k1", *[None] * 7))
    shared: dict = {}

    def attributes_of(key):
        return shared.setdefault(key, MappingProxyType(deployment_attributes(key)))

    expected = SpanEncoder({"service.name": "t"}, "llm-gateway").encode(
        [(t[0], records(t, attributes_of)) for t in traces]
    )
    encoder = RequestEncoder({"service.name": "t"}, "llm-gateway")
    assert encoder.encode(traces) == expected
    assert encoder.encode(traces) == expected  # the second time from the caches
