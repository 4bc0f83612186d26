"""The aiohttp application: routes, the one middleware, start-up and shutdown of what it holds."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import web

from backends import Endpoint
from errors import (
    ClientError,
    GatewayError,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from policies.clock import SYSTEM, Clock
from policies.record import RequestRecord
from policies.stores.layer import StoreLayer

from . import (
    admin,
    batches,
    controlplane,
    files,
    fine_tuning,
    logbodies,
    message_batches,
    messages,
    metrics,
    openapi,
    requestlog,
    responses,
    tracing,
    ui,
)
from .batch_runner import BatchRunner
from .blobs import Blobs, LocalBlobs
from .config import LoadedConfig
from .fine_tuning_runner import FineTuningRunner
from .keys import GATEWAY, RECORD, STORES
from .logs import get_logger
from .proxy import handler as proxy_handler
from .security import access, audit, crypto, erasure, retention
from .security.network import PEER
from .security.sealed_blobs import SealedBlobs
from .state import Gateway

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_API_PATHS = ("/v1/", "/chat/", "/completions", "/embeddings", "/models")
TRACING = web.AppKey("tracing", tracing.Tracing)
# Request ids: unique across processes and restarts (a random prefix per process) and cheap (a counter).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)
CLIENT_CLOSED = 499  # nginx's name for it: the client went away before the answer


def build_app(loaded: LoadedConfig, clock: Clock = SYSTEM) -> web.Application:
    """The gateway's aiohttp application; ``clock``: the time its policies read (tests pass a ManualClock)."""
    app = web.Application(
        middlewares=[_middleware, access.middleware],
        client_max_size=loaded.config.server.max_body_bytes,
        handler_args={"max_field_size": 16384},
    )
    app[STORES] = StoreLayer(loaded.config.stores, clock)
    app[GATEWAY] = Gateway.build(loaded, app[STORES], clock)
    app.on_response_prepare.append(_server_header)
    app.cleanup_ctx.append(_stores)  # first in, last out: the client outlives every gateway using it
    sealer = crypto.sealer(loaded.config.encryption)  # changing encryption for stored data needs a restart
    app[responses.STORE] = responses.new_store(
        app[STORES].kv, loaded.config.server.responses_ttl_s, sealer if sealer.on else None
    )
    app.cleanup_ctx.append(_lifecycle)
    app[controlplane.CONTROL] = controlplane.ControlPlane(app[STORES].kv, loaded.config.control_plane, clock)
    app.cleanup_ctx.append(_control)
    config = loaded.config
    blobs: Blobs = LocalBlobs(config.files.dir)
    if config.encryption is not None:
        blobs = SealedBlobs(blobs, crypto.keyring(config.encryption))
    app[files.FILES] = files.Files(
        app[STORES].kv, blobs, config.files, clock, retention=_tenant_retention(app)
    )
    app[batches.BATCHES] = batches.Batches(app[STORES].kv, config.batches, clock)
    if config.batches.enabled:  # changing it needs a restart
        app.cleanup_ctx.append(_batch_runner)
    app[fine_tuning.JOBS] = fine_tuning.Jobs(app[STORES].kv, config.fine_tuning, clock)
    if config.fine_tuning.enabled:  # changing it needs a restart
        app.cleanup_ctx.append(_fine_tuning_runner)
        fine_tuning.add_routes(app)  # OpenAI's fine-tuning API (docs/fine_tuning.md)
    traces = tracing.build(loaded.config.tracing, _API_PATHS)
    if traces is not None:  # off: no middleware, no OpenTelemetry import
        app.middlewares.append(traces.middleware)
        app[TRACING] = traces
    if loaded.config.audit.enabled:  # changing it needs a restart
        app[audit.AUDIT] = audit.AuditLog(loaded.config.audit.path, loaded.config.audit.retention_days)
    log = requestlog.build(loaded.config)  # changing request_log needs a restart
    if log is not None:
        app[requestlog.REQUEST_LOG] = log
        if log.bodies is not None:  # some tenant's bodies are logged
            app.middlewares.append(logbodies.middleware(_API_PATHS, requestlog.REQUEST_LOG))
    app[retention.RETENTION] = retention.Retention(
        app, app[files.FILES], app.get(requestlog.REQUEST_LOG), clock
    )
    app.cleanup_ctx.append(retention.background)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", proxy_handler(Endpoint.CHAT))
        app.router.add_post(f"{prefix}/completions", proxy_handler(Endpoint.COMPLETIONS))
        app.router.add_post(f"{prefix}/embeddings", proxy_handler(Endpoint.EMBEDDINGS))
        app.router.add_get(f"{prefix}/models", _list_models)
        app.router.add_get(f"{prefix}/models/{{model:.+}}", _get_model)
    app.router.add_post("/v1/messages", messages.handle)  # Anthropic's Messages API, any backend
    app.router.add_post("/v1/messages/count_tokens", messages.count_tokens)
    app.router.add_post("/v1/messages/batches", message_batches.create)  # Anthropic's, on the same runner
    app.router.add_get("/v1/messages/batches", message_batches.list_batches)
    app.router.add_get("/v1/messages/batches/{id}", message_batches.retrieve)
    app.router.add_post("/v1/messages/batches/{id}/cancel", message_batches.cancel)
    app.router.add_get("/v1/messages/batches/{id}/results", message_batches.results)
    app.router.add_post("/v1/responses", responses.create)  # OpenAI's Responses API, any backend
    app.router.add_get("/v1/responses/{id}", responses.retrieve)
    app.router.add_delete("/v1/responses/{id}", responses.delete)
    app.router.add_get("/v1/responses/{id}/input_items", responses.input_items)
    app.router.add_post("/v1/files", files.upload)  # OpenAI's Files and Batch APIs (docs/batches.md)
    app.router.add_get("/v1/files", files.list_files)
    app.router.add_get("/v1/files/{id}", files.retrieve)
    app.router.add_delete("/v1/files/{id}", files.delete)
    app.router.add_get("/v1/files/{id}/content", files.content)
    app.router.add_post("/v1/batches", batches.create)
    app.router.add_get("/v1/batches", batches.list_batches)
    app.router.add_get("/v1/batches/{id}", batches.retrieve)
    app.router.add_post("/v1/batches/{id}/cancel", batches.cancel)
    app.router.add_get("/", _healthz)  # agents (Claude Code) probe the base URL before the first request
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/admin/requests", requestlog.handle)
    app.router.add_get("/admin/requests/{id}", requestlog.handle_one)
    app.router.add_get("/admin/cache/savings", requestlog.handle_savings)
    app.router.add_get("/admin/batches", batches.admin_list)
    app.router.add_delete("/admin/tenants/{tenant}/data", erasure.handle)
    app.router.add_get("/admin/audit", audit.handle)
    admin.add_routes(app)
    ui.add_routes(app)
    return app


def _tenant_retention(app: web.Application) -> Callable[[str], float | None]:
    def of(name: str) -> float | None:  # the loaded config's, reloads included
        found = next((t for t in app[GATEWAY].loaded.config.tenants if t.name == name), None)
        return None if found is None else retention.retention_s(found)

    return of


async def _stores(app: web.Application) -> AsyncIterator[None]:
    """The process's one Redis client (or cluster client), shared by every policy and every reloaded config."""
    stores = app[STORES]
    await stores.open()
    yield
    await stores.close()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.start()
    metrics.publish_budgets(gateway.loaded.config)
    log = app.get(requestlog.REQUEST_LOG)
    if log is not None:
        await log.start()
    yield
    await gateway.close()
    if log is not None:
        await log.close()
    if TRACING in app:  # flushing waits for the exporter (a slow collector): off the event loop
        await asyncio.to_thread(app[TRACING].close)


async def _control(app: web.Application) -> AsyncIterator[None]:
    """The control plane's runtime keys and tenants, polled from the store layer (after the gateway starts)."""
    control = app[controlplane.CONTROL]
    await control.start(app, GATEWAY)
    yield
    await control.close()


async def _batch_runner(app: web.Application) -> AsyncIterator[None]:
    """Batches run in the background of every process, after the gateway started and until it closes."""
    runner = BatchRunner(
        lambda: app[GATEWAY],
        app[batches.BATCHES],
        app[files.FILES],
        app[batches.BATCHES].config,
        app[responses.STORE],
    )
    runner.start()
    yield
    await runner.close()


async def _fine_tuning_runner(app: web.Application) -> AsyncIterator[None]:
    """Fine-tuning jobs train in worker processes started by every gateway process (docs/fine_tuning.md)."""
    runner = FineTuningRunner(lambda: app[GATEWAY], app[fine_tuning.JOBS], app[files.FILES])
    runner.start()
    yield
    await runner.close()


async def _server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "llm-gateway"  # not aiohttp's and Python's versions


def error_response(exc: GatewayError, request_id: str) -> web.Response:
    headers = {"x-request-id": request_id, **exc.headers}
    return web.Response(
        body=orjson.dumps(exc.body()), status=exc.status, headers=headers, content_type="application/json"
    )


@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = request.headers.get("x-request-id", "")
    if not _REQUEST_ID.match(request_id):
        request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
    record = RequestRecord(request_id=request_id, started=started, endpoint=request.path)
    request[RECORD] = record
    api = request.path.startswith(_API_PATHS)
    if api:
        metrics.IN_FLIGHT.inc()
    try:
        response = await handler(request)
    except GatewayError as exc:
        response = _failed(record, exc)
    except web.HTTPException as exc:
        response = _failed(record, _from_http(exc, request))
    except asyncio.CancelledError:
        record.status = CLIENT_CLOSED
        record.error = "client disconnected"
        raise
    except Exception:  # a bug: answer 500 in OpenAI's format, keep the worker alive
        get_logger().exception("unhandled error", request_id=request_id, path=request.path)
        # The exception's class stays in the log: it tells a caller about the code, not about their request.
        response = _failed(record, GatewayError(f"Internal error; request id {request_id}."))
    finally:
        if api:
            metrics.IN_FLIGHT.dec()
            _finish(request, record)
    if "x-request-id" not in response.headers and not response.prepared:
        response.headers["x-request-id"] = request_id
    return response


def _failed(record: RequestRecord, exc: GatewayError) -> web.Response:
    record.fail(exc)
    response = error_response(exc, record.request_id)
    record.overhead_s = time.perf_counter() - record.started - record.upstream_s
    response.headers["x-gateway-overhead-ms"] = f"{record.overhead_s * 1000:.3f}"
    return response


def _from_http(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 404:
        return NotFound(f"Invalid URL ({request.method} {request.path})")
    if exc.status == 405:
        return MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.path}",
            headers={"Allow": exc.headers.get("Allow", "")},
        )
    if exc.status == 413:
        return PayloadTooLarge("Request body exceeds the size limit.")
    if exc.status < 500:
        return ClientError(exc.reason or "HTTP error", status=exc.status)
    return GatewayError(exc.reason or "HTTP error", status=exc.status)


def _finish(request: web.Request, record: RequestRecord) -> None:
    gateway = request.app[GATEWAY]
    latency = time.perf_counter() - record.started
    status = str(record.status or CLIENT_CLOSED)
    tenant, alias = record.tenant, record.alias
    metrics.requests(tenant, alias, status).inc()
    metrics.latency(tenant, alias).observe(latency)
    metrics.OVERHEAD.observe(record.overhead_s)
    if record.ttft_s is not None:
        metrics.ttft(tenant, alias).observe(record.ttft_s)
    if record.prompt_tokens:
        metrics.tokens(tenant, alias, "prompt").inc(record.prompt_tokens)
    if record.completion_tokens:
        metrics.tokens(tenant, alias, "completion").inc(record.completion_tokens)
    if record.cache is not None:
        metrics.CACHE_LOOKUPS.labels(record.tenant, record.alias, record.cache).inc()
        if record.saved_usd:
            metrics.CACHE_SAVED.labels(record.tenant).inc(record.saved_usd)
    if record.deployment is not None and (record.status >= 500 or record.status in (408, 429)):
        metrics.UPSTREAM_ERRORS.labels(record.deployment, status).inc()
    if record.variant is not None:
        metrics.VARIANT_REQUESTS.labels(alias, record.variant, status).inc()
        metrics.VARIANT_LATENCY.labels(alias, record.variant).observe(latency)
        if record.ttft_s is not None:
            metrics.VARIANT_TTFT.labels(alias, record.variant).observe(record.ttft_s)
        if record.prompt_tokens:
            metrics.VARIANT_TOKENS.labels(alias, record.variant, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            metrics.VARIANT_TOKENS.labels(alias, record.variant, "completion").inc(record.completion_tokens)
        if record.cost_usd:
            metrics.VARIANT_COST.labels(alias, record.variant).inc(record.cost_usd)
        if record.cache is not None and record.cache.startswith("hit"):
            metrics.VARIANT_CACHE_HITS.labels(alias, record.variant).inc()
    if record.trace is not None:
        record.trace.finish(record)
    log = request.app.get(requestlog.REQUEST_LOG)
    if log is not None:
        log.add(record, latency, int(status), request.get(requestlog.BODIES))
    if not gateway.loaded.config.server.log_requests:
        return
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "tenant": tenant,
        "key_id": record.key_id,
        "alias": alias,
        "deployment": record.deployment,
        "endpoint": record.endpoint,
        "status": int(status),
        "stream": record.stream,
        "latency_ms": round(latency * 1000, 3),
        "overhead_ms": round(record.overhead_s * 1000, 3),
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
    }
    if record.ttft_s is not None:
        fields["ttft_ms"] = round(record.ttft_s * 1000, 3)
    if record.attempts:
        fields["attempts"] = record.attempts
    if record.cache is not None:
        fields["cache"] = record.cache
    if record.variant is not None:
        fields["variant"] = record.variant
    if record.cost_usd is not None:
        fields["cost_usd"] = record.cost_usd
    if record.saved_usd is not None:
        fields["saved_usd"] = record.saved_usd
    if record.error is not None:
        fields["error"] = record.error
    if record.prompt is not None:
        fields["prompt"] = record.prompt
    if record.trace is not None:
        fields["trace_id"] = record.trace.trace_id
    _request_log().log(_LEVELS[record.log_level], "request", **fields)


_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@functools.cache
def _request_log() -> Any:
    # Bound once: a fresh structlog proxy per call re-binds each time (about half the line's cost).
    return get_logger().bind()


async def _list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    caller = gateway.auth.authenticate(request.headers, request.get(PEER))
    request[RECORD].tenant, request[RECORD].key_id = caller.tenant.name, caller.key_id
    created = gateway.loaded.loaded_at
    data = [
        _model_object(alias.name, created)
        for alias in gateway.loaded.config.models
        if caller.tenant.allows(alias.name) and gateway.router.usable(alias.name)
    ]
    data += [
        _model_object(m.name, m.created, caller.tenant.name)
        for m in await fine_tuning.fine_tuned_models(request, caller.tenant.name)
    ]
    request[RECORD].status = 200
    return _json({"object": "list", "data": data}, request)


async def _get_model(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    caller = gateway.auth.authenticate(request.headers, request.get(PEER))
    request[RECORD].tenant, request[RECORD].key_id = caller.tenant.name, caller.key_id
    alias = request.match_info["model"]
    tuned = await fine_tuning.fine_tuned_model(request, caller.tenant.name, alias)
    if tuned is not None:
        request[RECORD].status = 200
        return _json(_model_object(tuned.name, tuned.created, caller.tenant.name), request)
    if alias not in gateway.router or not caller.tenant.allows(alias) or not gateway.router.usable(alias):
        raise ModelNotFound(
            f"The model `{alias}` does not exist or you do not have access to it.", param="model"
        )
    request[RECORD].alias = alias
    request[RECORD].status = 200
    return _json(_model_object(alias, gateway.loaded.loaded_at), request)


def _model_object(alias: str, created: int, owner: str = "llm-gateway") -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": created, "owned_by": owner}


def _json(data: Any, request: web.Request, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={"x-request-id": request[RECORD].request_id},
    )


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"}, request)


async def _readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    loaded = gateway.loaded
    disabled = [
        {"alias": alias, "deployment": index, "reason": reason}
        for (alias, index), reason in loaded.disabled.items()
    ]
    loading = [backend.id for backend in gateway.backends if not backend.ready]
    failed = [
        {"deployment": backend.id, "reason": backend.failure}
        for backend in gateway.backends
        if backend.failure is not None
    ]
    # No config path here: an anonymous caller learns nothing about the host (the path is in the log).
    body = {
        "status": "ready"
        if gateway.ready and not loading and not gateway.draining
        else ("draining" if gateway.draining else "starting"),
        "deployments": {
            "enabled": len(gateway.backends),
            "disabled": disabled,
            "loading": loading,
            "failed": failed,
            "starting": [b.id for b in gateway.backends if b.starting],
        },
    }
    if body["status"] != "ready":
        exc = Unavailable(f"gateway is {body['status']}")
        return web.Response(
            body=orjson.dumps({**exc.body(), **body}), status=503, content_type="application/json"
        )
    return _json(body, request)


async def _openapi(request: web.Request) -> web.Response:
    return _json(openapi.document(), request)


async def _metrics(request: web.Request) -> web.Response:
    # off the loop: many label series (tenants x aliases x deployments), or many workers' files, take ms to s
    payload, content_type = await asyncio.to_thread(metrics.render)
    response = web.Response(body=payload)
    response.headers["Content-Type"] = content_type
    return response
