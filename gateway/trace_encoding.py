"""Request traces (gateway/tracing.py's ``RequestTrace``) to OTLP spans: what the exporter process runs.

Apart from gateway/tracing.py, which imports the gateway's config, aiohttp and the policies, so that the
exporter process (gateway/trace_export.py) imports only this, gateway/otlp.py, protobuf and ``requests``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from . import otlp
from .otlp import SpanRecord

# request fields -> GenAI attributes, set on the request's span
_REQUEST_FIELDS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("seed", "gen_ai.request.seed"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
)
_NONE: Mapping[str, Any] = MappingProxyType({})  # a stage without a deployment's attributes

# A deployment as its spans name it: id, provider, model, api_base and the request's operation.
DeploymentKey = tuple[str, str, str, "str | None", str]
# One request's trace as the exporter gets it (gateway/tracing.py's docstring): trace id, its ended
# stages, the request's span id, the client's parent span id (0: none), start, end, method, path, request
# id, operation, the GenAI request fields (``RequestSpans.request``; None: not read), then the record's alias,
# status, tenant, key id, prompt and completion tokens, deployment, cache, cost, TTFT and error.
RequestTrace = tuple[Any, ...]


def deployment_attributes(key: DeploymentKey) -> dict[str, Any]:
    """The attributes of a span of a stage that ran on a deployment (an upstream attempt, the engine)."""
    deployment_id, provider, model, api_base, operation = key
    attributes: dict[str, Any] = {
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gateway.deployment": deployment_id,
    }
    if operation:
        attributes["gen_ai.operation.name"] = operation
    if api_base:
        from yarl import URL

        url = URL(api_base)
        attributes.update({"server.address": url.host or "", "server.port": url.port or 0})
    return attributes


def _request_fields(fields: tuple[Any, ...]) -> list[tuple[str, Any]]:
    """The GenAI request attributes of the body's fields: the numbers among them, and whether it streams."""
    out = [
        (attribute, value)
        for (_, attribute), value in zip(_REQUEST_FIELDS, fields, strict=False)
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    out.append(("gen_ai.request.stream", fields[-1] is True))
    return out


def _root(trace: RequestTrace) -> tuple[str, dict[str, Any], int, str]:
    """The request's span's name, attributes, status and status message."""
    (
        _,
        _,
        _,
        _,
        _,
        _,
        method,
        path,
        request_id,
        operation,
        fields,
        alias,
        status,
        tenant,
        key_id,
        prompt_tokens,
        completion_tokens,
        deployment,
        cache,
        cost_usd,
        ttft_s,
        error,
    ) = trace
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path,
        "gateway.request_id": request_id,
    }
    if operation:
        attributes["gen_ai.operation.name"] = operation
    if fields is not None:
        attributes.update(_request_fields(fields))
    name = f"{method} {path}"
    if alias != "-":
        name = f"{operation or 'request'} {alias}"
        attributes["gen_ai.request.model"] = alias
    attributes["http.response.status_code"] = status
    attributes["gateway.tenant"] = tenant
    attributes["gateway.key_id"] = key_id
    for key, value in (
        ("gen_ai.usage.input_tokens", prompt_tokens),
        ("gen_ai.usage.output_tokens", completion_tokens),
        ("gateway.deployment", deployment),
        ("gateway.cache", cache),
        ("gateway.cost_usd", cost_usd),
        ("gateway.ttft_s", ttft_s),
    ):
        if value is not None:
            attributes[key] = value
    span_status, message = otlp.STATUS_UNSET, ""
    if status >= 500 or status == 499:
        attributes["error.type"] = str(status)
        span_status, message = otlp.STATUS_ERROR, error or ""
    elif status >= 400 and error:
        attributes["error.type"] = str(status)
    return name, attributes, span_status, message


def records(
    trace: RequestTrace, attributes_of: Callable[[DeploymentKey], Mapping[str, Any]]
) -> list[SpanRecord]:
    """A request's trace as span records: its stages, then the request's own span (``RequestEncoder`` writes
    the same spans straight from the trace)."""
    _, stages, span_id, parent_id, start, end = trace[:6]
    finished = []
    for name, stage_id, stage_parent, stage_start, key, stage_end, status, error in stages:
        attributes: Mapping[str, Any] = attributes_of(key) if key is not None else _NONE
        stage_status, stage_message = otlp.STATUS_UNSET, ""
        if status is not None or error is not None:
            attributes = dict(attributes)
            if status is not None:
                attributes["http.response.status_code"] = status
            if error is not None:
                attributes["error.type"] = str(status) if status else "error"
                stage_status, stage_message = otlp.STATUS_ERROR, error
        finished.append(
            SpanRecord(
                name,
                stage_id,
                stage_parent,
                False,
                otlp.KIND_CLIENT if name == "upstream" else otlp.KIND_INTERNAL,
                stage_start,
                stage_end,
                stage_status,
                stage_message,
                attributes,
            )
        )
    name, root_attributes, status, message = _root(trace)
    finished.append(
        SpanRecord(
            name,
            span_id,
            parent_id,
            parent_id != 0,
            otlp.KIND_SERVER,
            start,
            end,
            status,
            message,
            root_attributes,
        )
    )
    return finished


class RequestEncoder(otlp.SpanEncoder):
    """``RequestTrace``s to an export request, on the exporter's thread: the spans ``records`` makes, written
    straight from the trace's values. What repeats across requests is encoded once and its bytes reused: a
    stage's attributes (by deployment and status), and the request's span's name and its attributes from
    the method to the key id (by their values and the request fields' types); the rest (request id,
    tokens, cost, TTFT) is written per request."""

    def __init__(self, resource: Mapping[str, Any], scope: str) -> None:
        super().__init__(resource, scope)
        self._stages: dict[tuple[DeploymentKey | None, int | None], bytes] = {}
        self._roots: dict[tuple[Any, ...], tuple[str, bytes, bytes]] = {}

    def _stage(self, key: DeploymentKey | None, status: int | None) -> bytes:
        attributes = deployment_attributes(key) if key is not None else {}
        if status is not None:
            attributes["http.response.status_code"] = status
        if len(self._stages) >= otlp.MAX_CACHED:
            self._stages.clear()
        entries = self._stages[key, status] = b"".join([self.attribute(k, v) for k, v in attributes.items()])
        return entries

    def _root(self, shared: tuple[Any, ...] | None, trace: RequestTrace) -> tuple[str, bytes, bytes]:
        """The request's span's name and its attribute entries before and after the request id, kept under
        ``shared`` (the values they come from; None: not kept)."""
        name, attributes, _, _ = _root(trace)
        entries = [self.attribute(k, v) for k, v in attributes.items()]
        # method, path | request id | operation, request fields, alias, status, tenant, key id | the rest
        after = 3 + (len(_request_fields(trace[10])) if trace[10] is not None else 0)
        after += bool(trace[9]) + (trace[11] != "-") + 3
        found = (name, b"".join(entries[:2]), b"".join(entries[3:after]))
        if shared is not None:
            if len(self._roots) >= otlp.MAX_CACHED:
                self._roots.clear()
            self._roots[shared] = found
        return found

    def encode(self, traces: Sequence[RequestTrace]) -> bytes:
        attribute, double, frame = self.attribute, self.double, self.frame
        stage_entries, roots = self._stages, self._roots
        spans: list[bytes] = []
        append = spans.append
        for trace in traces:
            trace_id, stages, span_id, parent_id, start, end = trace[:6]
            prefix = otlp.trace_prefix(trace_id)
            for name, stage_id, stage_parent, stage_start, key, stage_end, code, message in stages:
                entries = stage_entries.get((key, code))
                if entries is None:  # (b"": a stage with no attributes)
                    entries = self._stage(key, code)
                if message is not None:
                    entries += attribute("error.type", str(code) if code else "error")
                append(
                    frame(
                        prefix,
                        stage_id,
                        stage_parent,
                        False,
                        name,
                        otlp.KIND_CLIENT if name == "upstream" else otlp.KIND_INTERNAL,
                        stage_start,
                        stage_end,
                        otlp.STATUS_UNSET if message is None else otlp.STATUS_ERROR,
                        message or "",
                        entries,
                    )
                )
            # the values the request's span's name and first attributes come from (method, path, operation,
            # request fields, alias, status, tenant, key id), and the request fields' types (1, 1.0 and True
            # are equal keys, encoded differently)
            shared = trace[6:8] + trace[9:15]
            fields = trace[10]
            if fields is not None:
                shared += tuple(map(type, fields))
            try:
                found = roots.get(shared) or self._root(shared, trace)
            except TypeError:  # a request field that cannot be a key (a list): encoded, not kept
                found = self._root(None, trace)
            parts = [found[1], self.unique("gateway.request_id", trace[8]), found[2]]
            prompt_tokens, completion_tokens, deployment, cache, cost_usd, ttft_s, error = trace[15:]
            if prompt_tokens is not None:
                parts.append(attribute("gen_ai.usage.input_tokens", prompt_tokens))
            if completion_tokens is not None:
                parts.append(attribute("gen_ai.usage.output_tokens", completion_tokens))
            if deployment is not None:
                parts.append(attribute("gateway.deployment", deployment))
            if cache is not None:
                parts.append(attribute("gateway.cache", cache))
            if cost_usd is not None:
                parts.append(
                    double("gateway.cost_usd", cost_usd)
                    if type(cost_usd) is float
                    else attribute("gateway.cost_usd", cost_usd)
                )
            if ttft_s is not None:
                parts.append(
                    double("gateway.ttft_s", ttft_s)
                    if type(ttft_s) is float
                    else attribute("gateway.ttft_s", ttft_s)
                )
            span_status, span_message = otlp.STATUS_UNSET, ""
            status = trace[12]
            if status >= 400:
                if status >= 500 or status == 499:
                    parts.append(attribute("error.type", str(status)))
                    span_status, span_message = otlp.STATUS_ERROR, error or ""
                elif error:
                    parts.append(attribute("error.type", str(status)))
            append(
                frame(
                    prefix,
                    span_id,
                    parent_id,
                    parent_id != 0,
                    found[0],
                    otlp.KIND_SERVER,
                    start,
                    end,
                    span_status,
                    span_message,
                    b"".join(parts),
                )
            )
        return self.request(spans)
