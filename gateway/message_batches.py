"""Anthropic's Message Batches API (``/v1/messages/batches``) in front of any backend: create with inline
requests, retrieve, list, cancel, results as JSONL. The requests are kept as a batch input file and run by the
same runner as OpenAI's batches (gateway/batch_runner.py), each translated to the chat shape and back."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from backends.wire import anthropic as wire
from errors import GatewayError, InvalidRequest, NotFound

from . import bridge
from .batch_runner import MESSAGES
from .batches import BATCHES, TERMINAL, counts, incoming, status_of
from .blobs import lines
from .files import FILES, _tenant, respond
from .keys import GATEWAY, RECORD

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_REQUESTS = 100_000


def _time(value: str | None) -> str | None:
    return (
        None
        if value is None
        else dt.datetime.fromtimestamp(int(value), dt.UTC).isoformat().replace("+00:00", "Z")
    )


def render(fields: dict[str, str], origin: str) -> dict[str, Any]:
    """The Anthropic MessageBatch object."""
    status = status_of(fields)
    ended = status in TERMINAL
    c = counts(fields)
    total = c["total"]
    not_run = total - c["completed"] - c["failed"] if ended else 0
    processing = 0 if ended else max(total - c["completed"] - c["failed"], 0)
    ended_at = next((fields[f"{s}_at"] for s in TERMINAL if f"{s}_at" in fields), None)
    return {
        "id": fields["id"],
        "type": "message_batch",
        "processing_status": "ended" if ended else "canceling" if status == "cancelling" else "in_progress",
        "request_counts": {
            "processing": processing,
            "succeeded": c["completed"],
            "errored": c["failed"],
            "canceled": not_run if fields["status"] == "cancelled" else 0,
            "expired": not_run if fields["status"] == "expired" else 0,
        },
        "ended_at": _time(ended_at),
        "created_at": _time(fields["created_at"]),
        "expires_at": _time(fields["expires_at"]),
        "archived_at": None,
        "cancel_initiated_at": _time(fields.get("cancelling_at")),
        "results_url": f"{origin}/v1/messages/batches/{fields['id']}/results" if ended else None,
    }


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def _get(request: web.Request) -> dict[str, str]:
    fields = await request.app[BATCHES].get(_tenant(request), request.match_info["id"])
    if fields.get("kind") != "anthropic":
        raise NotFound(f"No message batch found with id '{request.match_info['id']}'.")
    return fields


async def _create(request: web.Request) -> web.Response:
    caller, body = await incoming(request)
    tenant = caller.tenant.name
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests or len(requests) > _MAX_REQUESTS:
        raise InvalidRequest(f"requests: a list of 1 to {_MAX_REQUESTS} requests is required.")
    gateway = request.app[GATEWAY]
    seen: set[str] = set()
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
            raise InvalidRequest(f"requests.{i}.custom_id: 1 to 64 letters, digits, '_' or '-' are required.")
        if custom_id in seen:
            raise InvalidRequest(f"requests.{i}.custom_id: '{custom_id}' is used more than once.")
        seen.add(custom_id)
        try:
            params = wire.check(item.get("params"))
        except GatewayError as exc:
            raise InvalidRequest(f"requests.{i}.params: {exc.message}") from exc
        if params["model"] not in gateway.router or not caller.tenant.allows(params["model"]):
            raise NotFound(f"requests.{i}.params.model: {params['model']}")

    async def lines() -> AsyncIterator[bytes]:
        for item in requests:
            yield (
                orjson.dumps(
                    {
                        "custom_id": item["custom_id"],
                        "method": "POST",
                        "url": MESSAGES,
                        "body": item["params"],
                    }
                )
                + b"\n"
            )

    record = await request.app[FILES].create(tenant, "message_batch.jsonl", "batch", lines())
    fields = await request.app[BATCHES].create(
        tenant, caller.key_id, MESSAGES, record["id"], None, kind="anthropic"
    )
    return respond(request, render(fields, _origin(request)))


async def _retrieve(request: web.Request) -> web.Response:
    return respond(request, render(await _get(request), _origin(request)))


async def _cancel(request: web.Request) -> web.Response:
    fields = await _get(request)
    if fields["status"] not in TERMINAL:
        fields = await request.app[BATCHES].cancel(fields["tenant"], fields["id"])
    return respond(request, render(fields, _origin(request)))


async def _list(request: web.Request) -> web.Response:
    request.app[BATCHES].kv.require_reachable()
    found = [
        render(fields, _origin(request))
        for fields in await request.app[BATCHES].listed(_tenant(request), "anthropic")
    ]
    after = request.query.get("after_id")
    if after:
        ids = [b["id"] for b in found]
        found = found[ids.index(after) + 1 :] if after in ids else []
    limit = max(1, min(int(request.query.get("limit", "20") or 20), 1000))
    data = found[:limit]
    return respond(
        request,
        {
            "data": data,
            "has_more": len(found) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        },
    )


async def _results(request: web.Request) -> web.StreamResponse:
    fields = await _get(request)
    if fields["status"] not in TERMINAL:
        raise InvalidRequest(
            f"Message batch {fields['id']} has not ended yet; its results are not available."
        )
    files = request.app[FILES]
    response = web.StreamResponse(
        headers={"Content-Type": "application/binary", "x-request-id": request[RECORD].request_id}
    )
    await response.prepare(request)
    request[RECORD].status = 200
    # Anthropic's results are in no promised order: the answered lines, then the rest
    for name in ("output_file_id", "error_file_id"):
        if name not in fields:
            continue
        chunks = await files.content(fields["tenant"], fields[name])
        async for line in lines(chunks):
            await response.write(orjson.dumps(_result(orjson.loads(line), fields["status"])) + b"\n")
    await response.write_eof()
    return response


def _result(line: dict[str, Any], status: str) -> dict[str, Any]:
    """An OpenAI-format output line as an Anthropic result line."""
    answer = line.get("response")
    if answer is None:
        kind = "expired" if status == "expired" else "canceled"
        return {"custom_id": line["custom_id"], "result": {"type": kind}}
    if answer["status_code"] < 400:
        return {"custom_id": line["custom_id"], "result": {"type": "succeeded", "message": answer["body"]}}
    error = (answer.get("body") or {}).get("error") or {}
    failure = GatewayError(str(error.get("message", "upstream error")), status=answer["status_code"])
    return {"custom_id": line["custom_id"], "result": {"type": "errored", "error": wire.error_body(failure)}}


create = bridge.in_format(_create, wire.error_body)
retrieve = bridge.in_format(_retrieve, wire.error_body)
cancel = bridge.in_format(_cancel, wire.error_body)
list_batches = bridge.in_format(_list, wire.error_body)
results = bridge.in_format(_results, wire.error_body)
