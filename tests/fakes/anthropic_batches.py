"""The Anthropic fake's Message Batches API, written from Anthropic's API reference:
``POST /v1/messages/batches`` (``requests: [{custom_id, params}]``), ``GET /v1/messages/batches/{id}``,
``POST /v1/messages/batches/{id}/cancel``, ``GET /v1/messages/batches/{id}/results`` (JSONL).

A batch is ``in_progress`` until it is first retrieved, then ``ended`` with every request answered
as the fake answers a live one (``succeeded`` with the message, ``errored`` with the error for a model
``error-NNN`` or a bad request; for ``flaky``, as the OpenAI fake's batch lines, an ``api_error`` where the last
message says FAIL); a cancelled batch is ``canceling``, then ``ended`` with its requests
``canceled``. Results are in no promised order (here: reversed), as Anthropic says."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
from aiohttp import web

from .anthropic_upstream import BadRequest, error, gist, message
from .openai_upstream import STATE, FakeState, Seen
from .scenario import answer, error_status


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in ("requests", "results")}


def _fails(params: dict[str, Any]) -> bool:
    messages = params.get("messages") or [{}]
    return params.get("model") == "flaky" and "FAIL" in str(messages[-1].get("content"))


def _result(params: dict[str, Any]) -> dict[str, Any]:
    status = 500 if _fails(params) else error_status(str(params.get("model", "")))
    if status is not None:
        return {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {
                    "type": "api_error" if status >= 500 else "invalid_request_error",
                    "message": f"fake error {status}",
                },
            },
        }
    try:
        return {"type": "succeeded", "message": message(params, answer(gist(params)))}
    except BadRequest as exc:
        return {
            "type": "errored",
            "error": {"type": "error", "error": {"type": "invalid_request_error", "message": str(exc)}},
        }


def _refused(request: web.Request, state: FakeState, body: Any = None) -> web.Response | None:
    if state.record:
        state.requests.append(Seen(request.path, dict(request.query), dict(request.headers), body))
    if state.api_key is not None and request.headers.get("x-api-key") != state.api_key:
        return error(401, "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return error(400, "anthropic-version: header is required")
    return None


def _found(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
    state = request.app[STATE]
    refused = _refused(request, state)
    if refused is not None:
        return None, refused
    batch = state.batches.get(request.match_info["id"])
    if batch is None:
        return None, error(404, f"message batch {request.match_info['id']} not found")
    return batch, None


async def _create(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = orjson.loads(await request.read())
    refused = _refused(request, state, body)
    if refused is not None:
        return refused
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        return error(400, "requests: Field required")
    batch_id = f"msgbatch_{uuid.uuid4().hex[:24]}"
    batch: dict[str, Any] = {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {
            "processing": len(requests),
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        },
        "ended_at": None,
        "created_at": _now(),
        "expires_at": _now(),
        "archived_at": None,
        "cancel_initiated_at": None,
        "results_url": None,
        "requests": requests,
        "results": [],
    }
    state.batches[batch_id] = batch
    return web.json_response(_public(batch))


def _end(batch: dict[str, Any], origin: str) -> None:
    counts = batch["request_counts"]
    for item in batch["requests"]:
        result = (
            {"type": "canceled"} if batch["processing_status"] == "canceling" else _result(item["params"])
        )
        batch["results"].append({"custom_id": item["custom_id"], "result": result})
        counts[str(result["type"])] += 1
    counts["processing"] = 0
    batch.update(
        processing_status="ended",
        ended_at=_now(),
        results_url=f"{origin}/v1/messages/batches/{batch['id']}/results",
    )


async def _retrieve(request: web.Request) -> web.Response:
    batch, refused = _found(request)
    if batch is None:
        return refused  # type: ignore[return-value]
    if batch["processing_status"] != "ended":
        _end(batch, f"{request.scheme}://{request.host}")
    return web.json_response(_public(batch))


async def _cancel(request: web.Request) -> web.Response:
    batch, refused = _found(request)
    if batch is None:
        return refused  # type: ignore[return-value]
    if batch["processing_status"] == "in_progress":
        batch.update(processing_status="canceling", cancel_initiated_at=_now())
    return web.json_response(_public(batch))


async def _results(request: web.Request) -> web.Response:
    batch, refused = _found(request)
    if batch is None:
        return refused  # type: ignore[return-value]
    if batch["processing_status"] != "ended":
        return error(400, f"message batch {batch['id']} has not ended")
    lines = b"".join(orjson.dumps(r) + b"\n" for r in reversed(batch["results"]))
    return web.Response(body=lines, content_type="application/binary")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages/batches", _create)
    app.router.add_get("/v1/messages/batches/{id}", _retrieve)
    app.router.add_post("/v1/messages/batches/{id}/cancel", _cancel)
    app.router.add_get("/v1/messages/batches/{id}/results", _results)
