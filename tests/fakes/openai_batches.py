"""The OpenAI fake's Files and Batch APIs, written from OpenAI's API reference: ``POST /v1/files`` (multipart,
``purpose``, ``file``), ``GET /v1/files/{id}/content``; ``POST /v1/batches``,
``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

A batch moves one step each time it is retrieved (``validating`` -> ``in_progress`` -> ``finalizing`` ->
``completed``), so a test decides how often it is looked at and no time passes. At ``finalizing`` every line is
answered as the fake answers it live (``openai_upstream.whole_answer``): the output file holds the lines
answered (2xx), the error file the others, both in OpenAI's line format. A file whose lines name more than one
model, or a line that is not a POST to the batch's endpoint, fails the batch with ``errors`` as OpenAI reports
them. A cancelled batch is ``cancelling``, then ``cancelled`` at the next look, its lines not run.

Azure OpenAI's form of the same APIs, from Azure's batch reference: ``/openai/files``, ``/openai/batches``...
with an ``api-version`` query (none: 404, as Azure answers) and the ``api-key`` header; its batches and lines
name the endpoint without ``/v1`` (``/chat/completions``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from .openai_upstream import STATE, FakeState, Seen, _error, whole_answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STEPS = {
    "validating": "in_progress",
    "in_progress": "finalizing",
    "finalizing": "completed",
    "cancelling": "cancelled",
}


def _azure(request: web.Request) -> bool:
    return request.path.startswith("/openai/")


def _authorized(request: web.Request, state: FakeState) -> bool:
    if state.api_key is None:
        return True
    if _azure(request):
        return request.headers.get("api-key", "") == state.api_key
    return request.headers.get("Authorization", "") == f"Bearer {state.api_key}"


def _seen(request: web.Request, state: FakeState, body: Any = None) -> None:
    if state.record:
        state.requests.append(Seen(request.path, dict(request.query), dict(request.headers), body))


def _file(state: FakeState, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    state.files[file_id] = {
        "id": file_id,
        "object": "file",
        "bytes": len(data),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
        "data": data,
    }
    return state.files[file_id]


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("data", "lines", "azure")}


async def _upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not _authorized(request, state):
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    purpose, filename, data = None, "upload.jsonl", b""
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        if part.name == "purpose":
            purpose = (await part.read()).decode()
        elif part.name == "file":
            filename = part.filename or filename
            data = bytes(await part.read())
    _seen(request, state, {"purpose": purpose, "filename": filename, "bytes": len(data)})
    if purpose is None:
        return _error(400, "Missing required parameter: 'purpose'.")
    return web.json_response(_public(_file(state, filename, purpose, data)))


def _found_file(request: web.Request) -> dict[str, Any] | None:
    return request.app[STATE].files.get(request.match_info["id"])


async def _file_content(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _seen(request, state)
    if not _authorized(request, state):
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    record = _found_file(request)
    if record is None:
        return _error(404, f"No such File object: {request.match_info['id']}")
    return web.Response(body=record["data"], content_type="application/octet-stream")


def _check(lines: list[dict[str, Any]], endpoint: str) -> list[dict[str, Any]]:
    errors = []
    models = set()
    for number, line in enumerate(lines, 1):
        if line.get("method") != "POST" or line.get("url") != endpoint:
            errors.append(
                {
                    "code": "invalid_request",
                    "line": number,
                    "param": "url",
                    "message": f"The url must be {endpoint} and the method POST.",
                }
            )
        models.add((line.get("body") or {}).get("model"))
    if len(models) > 1:
        errors.append(
            {
                "code": "model_mismatch",
                "line": None,
                "param": "body.model",
                "message": "Each batch can only contain requests to one model.",
            }
        )
    return errors


async def _create(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not _authorized(request, state):
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    body = orjson.loads(await request.read())
    _seen(request, state, body)
    source = state.files.get(body.get("input_file_id"))
    if source is None:
        return _error(404, f"No such File object: {body.get('input_file_id')}")
    if body.get("completion_window") != "24h":
        return _error(400, "Invalid value for 'completion_window'.")
    now = int(time.time())
    batch = {
        "id": f"batch_{uuid.uuid4().hex[:24]}",
        "object": "batch",
        "endpoint": body["endpoint"],
        "errors": None,
        "input_file_id": source["id"],
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + 24 * 3600,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
        "azure": _azure(request),
        "lines": [orjson.loads(line) for line in source["data"].splitlines() if line.strip()],
    }
    state.batches[batch["id"]] = batch
    return web.json_response(_public(batch))


def _step(state: FakeState, batch: dict[str, Any]) -> None:
    status = _STEPS.get(batch["status"])
    if status is None:
        return
    now = int(time.time())
    if status == "in_progress":
        errors = _check(batch["lines"], batch["endpoint"])
        if errors:
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            return
        batch["request_counts"]["total"] = len(batch["lines"])
    if status == "finalizing":
        _answer_lines(state, batch)
    batch.update(status=status, **{f"{status}_at": now})


def _answer_lines(state: FakeState, batch: dict[str, Any]) -> None:
    output: list[bytes] = []
    errors: list[bytes] = []
    for line in batch["lines"]:
        endpoint = "/v1" + batch["endpoint"] if batch["azure"] else batch["endpoint"]
        status, body = whole_answer(endpoint, dict(line["body"]))
        out = {
            "id": f"batch_req_{uuid.uuid4().hex[:24]}",
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": body},
            "error": None,
        }
        (output if status < 400 else errors).append(orjson.dumps(out))
    batch["request_counts"].update(completed=len(output), failed=len(errors))
    for name, found in (("output_file_id", output), ("error_file_id", errors)):
        if found:
            batch[name] = _file(
                state, f"{batch['id']}_{name[:-8]}.jsonl", "batch_output", b"\n".join(found) + b"\n"
            )["id"]


def _found_batch(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
    """The batch the path names, or the error answering the request."""
    state = request.app[STATE]
    _seen(request, state)
    if not _authorized(request, state):
        return None, _error(401, "Incorrect API key provided.", code="invalid_api_key")
    batch = state.batches.get(request.match_info["id"])
    if batch is None:
        return None, _error(404, f"No batch found with id '{request.match_info['id']}'.")
    return batch, None


async def _retrieve(request: web.Request) -> web.Response:
    batch, refused = _found_batch(request)
    if batch is None:
        return refused  # type: ignore[return-value]
    _step(request.app[STATE], batch)
    return web.json_response(_public(batch))


async def _cancel(request: web.Request) -> web.Response:
    batch, refused = _found_batch(request)
    if batch is None:
        return refused  # type: ignore[return-value]
    if batch["status"] not in ("validating", "in_progress"):
        return _error(400, f"Cannot cancel a batch with status '{batch['status']}'.")
    batch.update(status="cancelling", cancelling_at=int(time.time()))
    return web.json_response(_public(batch))


def _versioned(handler: Handler) -> Handler:
    """An Azure route: refused without ``api-version``, as Azure does."""

    async def answer(request: web.Request) -> web.StreamResponse:
        if "api-version" not in request.query:
            return _error(404, "Resource not found")
        return await handler(request)

    return answer


def add_routes(app: web.Application) -> None:
    for prefix, wrap in (("/v1", lambda h: h), ("/openai", _versioned)):
        app.router.add_post(f"{prefix}/files", wrap(_upload))
        app.router.add_get(f"{prefix}/files/{{id}}/content", wrap(_file_content))
        app.router.add_post(f"{prefix}/batches", wrap(_create))
        app.router.add_get(f"{prefix}/batches/{{id}}", wrap(_retrieve))
        app.router.add_post(f"{prefix}/batches/{{id}}/cancel", wrap(_cancel))
