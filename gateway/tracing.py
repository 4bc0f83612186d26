"""OpenTelemetry traces of requests, with the GenAI semantic conventions (``tracing:`` in config).

One server span per API request (``chat {alias}``), parented on the client's W3C ``traceparent`` when it
sends one, and child spans for its stages: ``admission`` (with ``queue`` inside when it waited), ``cache``
(the lookup), one ``upstream`` per attempt (a client span; its ``traceparent`` goes upstream) and
``engine`` for the local engine. Spans go out over OTLP/HTTP from a batch processor's thread.

Off (the default), this module's SDK part is never imported and no middleware is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from backends import spans
from backends.config import DeploymentConfig
from policies.record import RequestRecord

from .config import TracingConfig
from .keys import RECORD

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

_OPERATIONS = {"/v1/chat/completions": "chat", "/chat/completions": "chat", "/v1/messages": "chat",
               "/v1/completions": "text_completion", "/completions": "text_completion",
               "/v1/embeddings": "embeddings", "/embeddings": "embeddings"}
# request fields -> GenAI attributes, set on the request's span
_REQUEST_FIELDS = (("max_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
                   ("top_p", "gen_ai.request.top_p"), ("seed", "gen_ai.request.seed"),
                   ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                   ("presence_penalty", "gen_ai.request.presence_penalty"))


class Tracing:
    """One process's tracer provider and the middleware that starts each request's trace."""

    def __init__(self, config: TracingConfig, paths: tuple[str, ...], provider: TracerProvider | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import INVALID_SPAN, SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if provider is None:
            provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                                      sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Large batches, sent every few seconds: the export thread takes the GIL from the event loop
            # for every batch it encodes and posts, so fewer, bigger ones cost the requests less.
            provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers), timeout=config.timeout_s),
                max_queue_size=config.max_queue, schedule_delay_millis=config.export_interval_s * 1000,
                max_export_batch_size=min(config.max_queue, 4096)))
        self.provider = provider
        # the SDK names the hot path uses, bound once here (the module imports no OpenTelemetry when off)
        self.server, self.client, self.internal = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL
        self.invalid = INVALID_SPAN
        self.in_context = set_span_in_context
        self.deployment_attributes: dict[tuple[str, str, str, str | None, str], dict[str, Any]] = {}
        self.paths = paths
        self.tracer: Tracer = provider.get_tracer("llm-gateway")
        self._propagator = TraceContextTextMapPropagator()

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

    def close(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor holds


class RequestSpans:
    """One request's trace: its server span and the stages open now (``backends.spans.Spans``)."""

    __slots__ = ("_open", "_root", "_tracing", "operation", "recording", "trace_id")

    def __init__(self, tracing: Tracing, request: web.Request, record: RequestRecord) -> None:
        context = tracing._propagator.extract(request.headers) if "traceparent" in request.headers else None
        self.operation = _OPERATIONS.get(request.path, "")
        self._tracing = tracing
        self._root: Span = tracing.tracer.start_span(
            f"{request.method} {request.path}", context=context, kind=tracing.server,
            attributes={"http.request.method": request.method, "url.path": request.path,
                        "gateway.request_id": record.request_id,
                        **({"gen_ai.operation.name": self.operation} if self.operation else {})})
        self.trace_id = f"{self._root.get_span_context().trace_id:032x}"
        # not sampled: the stages make no spans and no attributes are worked out (the trace id still goes
        # into the log line and upstream)
        self.recording = self._root.is_recording()
        self._open: list[Span] = []

    def start(self, name: str, deployment: DeploymentConfig | None, deployment_id: str | None) -> Span:
        tracing = self._tracing
        if not self.recording:
            return tracing.invalid
        parent = self._open[-1] if self._open else self._root
        attributes: dict[str, Any] = {}
        if deployment is not None:
            attributes = self._deployment(deployment, deployment_id or "")
        kind = tracing.client if name == "upstream" else tracing.internal
        span = tracing.tracer.start_span(name, context=tracing.in_context(parent), kind=kind, attributes=attributes)
        self._open.append(span)
        return span

    def _deployment(self, deployment: DeploymentConfig, deployment_id: str) -> dict[str, Any]:
        """A deployment's span attributes: worked out once per deployment and operation."""
        cache = self._tracing.deployment_attributes
        key = (deployment_id, deployment.provider, deployment.model, deployment.api_base, self.operation)
        found = cache.get(key)
        if found is None:
            found = {"gen_ai.provider.name": deployment.provider, "gen_ai.request.model": deployment.model,
                     "gateway.deployment": deployment_id}
            if self.operation:
                found["gen_ai.operation.name"] = self.operation
            if deployment.api_base:
                from yarl import URL

                url = URL(deployment.api_base)
                found.update({"server.address": url.host or "", "server.port": url.port or 0})
            if len(cache) > 10_000:   # configs reloaded many times: old deployments' entries go
                cache.clear()
            cache[key] = found
        return found

    def end(self, span: Span, status: int | None, error: str | None) -> None:
        if span is self._tracing.invalid:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            _failed(span, status, error)
        span.end()
        if span in self._open:
            self._open.remove(span)

    def traceparent(self) -> str:
        context = (self._open[-1] if self._open else self._root).get_span_context()
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    def request(self, body: dict[str, Any]) -> None:
        """The GenAI request attributes of the client's body."""
        if not self.recording:
            return
        values = {attribute: body[name] for name, attribute in _REQUEST_FIELDS
                  if isinstance(body.get(name), int | float) and not isinstance(body.get(name), bool)}
        values["gen_ai.request.stream"] = body.get("stream") is True
        self._root.set_attributes(values)

    def finish(self, record: RequestRecord) -> None:
        """End the request's span (and any stage left open by an error) with what the record says."""
        root = self._root
        if not self.recording:
            root.end()
            return
        if record.alias != "-":
            root.update_name(f"{self.operation or 'request'} {record.alias}")
            root.set_attribute("gen_ai.request.model", record.alias)
        attributes: dict[str, Any] = {"http.response.status_code": record.status, "gateway.tenant": record.tenant,
                                      "gateway.key_id": record.key_id}
        for name, value in (("gen_ai.usage.input_tokens", record.prompt_tokens),
                            ("gen_ai.usage.output_tokens", record.completion_tokens),
                            ("gateway.deployment", record.deployment), ("gateway.cache", record.cache),
                            ("gateway.cost_usd", record.cost_usd), ("gateway.ttft_s", record.ttft_s)):
            if value is not None:
                attributes[name] = value
        root.set_attributes(attributes)
        for span in reversed(self._open):
            _failed(span, None, record.error or "ended with the request")
            span.end()
        self._open.clear()
        if record.status >= 500 or record.status == 499:
            _failed(root, record.status, record.error or "")
        elif record.status >= 400 and record.error:
            root.set_attribute("error.type", str(record.status))
        root.end()


def _failed(span: Span, status: int | None, error: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", str(status) if status else "error")
    span.set_status(Status(StatusCode.ERROR, error))


def build(config: TracingConfig, paths: tuple[str, ...]) -> Tracing | None:
    """The tracer when ``tracing.enabled``; None (and no OpenTelemetry import) otherwise."""
    return Tracing(config, paths) if config.enabled else None
