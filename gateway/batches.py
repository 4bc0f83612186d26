"""``/v1/batches`` (OpenAI's Batch API): create from an uploaded JSONL file, retrieve, list, cancel.

A batch's state lives in the store layer's key/value surface, so every gateway process sees it and any of
them may run its lines (gateway/batch_runner.py). Keys, for batch ``B``:

    batch:B             hash: the batch's fields (status, counts, file ids, timestamps, tenant)
    batch:B:out:I       line I's output line (OpenAI's format): written once; the line is never sent again
    batch:B:done        hash: line index -> "1" answered / "0" error (the progress counts)
    batch:B:lease:I     the process running line I (a lease with a TTL: it expires with a killed process)
    batches, batches:T  every batch id, and tenant T's
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from backends import Endpoint
from errors import InvalidRequest
from policies.clock import Clock
from policies.stores.keyvalue import KeyValue

from . import bridge
from .auth import Caller
from .config import BatchesConfig
from .files import FILES, _tenant, new_id, page, respond
from .records import TenantRecords, metadata_of

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
MESSAGES = "/v1/messages"  # an Anthropic message batch's lines: translated to chat and back
LINE_ENDPOINTS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
    MESSAGES: Endpoint.CHAT,
    "/v1/responses": Endpoint.RESPONSES,
}
WINDOW_S = 24 * 3600
TERMINAL = ("completed", "failed", "expired", "cancelled")
_TTL_S = 30 * 24 * 3600
_TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class Batches(TenantRecords):
    """Batch records on ``kv``; the runner and the handlers both go through it."""

    def __init__(self, kv: KeyValue, config: BatchesConfig, clock: Clock) -> None:
        super().__init__(kv, clock, "batch", _TTL_S, "batch", "batch_id")
        self.config = config

    async def create(
        self,
        tenant: str,
        key_id: str,
        endpoint: str,
        input_file_id: str,
        metadata: dict[str, str] | None,
        kind: str = "openai",
    ) -> dict[str, str]:
        batch_id = new_id("batch_" if kind == "openai" else "msgbatch_")
        now = self.now()
        fields = {
            "id": batch_id,
            "tenant": tenant,
            "key_id": key_id,
            "endpoint": endpoint,
            "kind": kind,
            "input_file_id": input_file_id,
            "created_at": str(now),
            "expires_at": str(now + WINDOW_S),
            "metadata": orjson.dumps(metadata).decode(),
            "status": "validating",
        }
        await self.add(tenant, batch_id, fields)
        return fields

    async def answered(
        self, batch_id: str, index: int, custom_id: str, status: int, request_id: str, body: Any
    ) -> None:
        """Line ``index``'s output line (OpenAI's format) and its done mark."""
        out = {
            "id": new_id("batch_req_"),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        await self.kv.set(f"batch:{batch_id}:out:{index}", orjson.dumps(out).decode(), _TTL_S)
        await self.kv.hash_set(f"batch:{batch_id}:done", {str(index): "1" if status < 400 else "0"})

    async def moved(self, batch_id: str, status: str) -> None:
        """The batch enters ``status`` now."""
        await self.update(batch_id, status=status, **{f"{status}_at": str(self.now())})

    async def ids(self, tenant: str | None = None) -> list[str]:
        """Newest first, each once."""
        return list(dict.fromkeys(reversed(await self._listed_ids(tenant))))

    async def listed(self, tenant: str | None, kind: str | None = None) -> list[dict[str, str]]:
        """The batches of ``tenant`` (every tenant's: None) of ``kind`` (any: None), newest first."""
        found = await super().listed(tenant)
        return [f for f in found if kind is None or f.get("kind", "openai") == kind]

    async def cancel(self, tenant: str, batch_id: str) -> dict[str, str]:
        fields = await self.get(tenant, batch_id)
        if fields["status"] in TERMINAL:
            raise InvalidRequest(
                f"Cannot cancel a batch with status '{fields['status']}'.", code="batch_not_cancellable"
            )
        if "cancelling_at" not in fields:
            await self.update(batch_id, cancel_requested="1", cancelling_at=str(self.now()))
        return await self.get(tenant, batch_id)


def status_of(fields: dict[str, str]) -> str:
    status = fields["status"]
    if fields.get("cancel_requested") and status not in TERMINAL:
        return "cancelling"
    return status


def counts(fields: dict[str, str]) -> dict[str, int]:
    return {name: int(fields.get(name, 0)) for name in ("total", "completed", "failed")}


def render(fields: dict[str, str]) -> dict[str, Any]:
    """The OpenAI Batch object."""
    out: dict[str, Any] = {
        "id": fields["id"],
        "object": "batch",
        "endpoint": fields["endpoint"],
        "errors": orjson.loads(fields["errors"]) if "errors" in fields else None,
        "input_file_id": fields["input_file_id"],
        "completion_window": "24h",
        "status": status_of(fields),
        "output_file_id": fields.get("output_file_id"),
        "error_file_id": fields.get("error_file_id"),
        "created_at": int(fields["created_at"]),
        "expires_at": int(fields["expires_at"]),
        "request_counts": counts(fields),
        "metadata": orjson.loads(fields.get("metadata", "null")),
    }
    for name in _TIMES:
        out[name] = int(fields[name]) if name in fields else None
    return out


BATCHES = web.AppKey("batches", Batches)


async def incoming(request: web.Request) -> tuple[Caller, dict[str, Any]]:
    """A batch create's caller (its tenant and key on the record) and its body, a JSON object."""
    caller = bridge.caller(request)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("We could not parse the JSON body of your request.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return caller, body


async def create(request: web.Request) -> web.Response:
    caller, body = await incoming(request)
    tenant = caller.tenant.name
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str):
        raise InvalidRequest("Missing required parameter: 'input_file_id'.", param="input_file_id")
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"Invalid value for 'endpoint': {endpoint!r}. Supported: {', '.join(ENDPOINTS)}.",
            param="endpoint",
        )
    if body.get("completion_window") != "24h":
        raise InvalidRequest(
            "Invalid value for 'completion_window': only '24h' is supported.", param="completion_window"
        )
    metadata = metadata_of(body)
    record = await request.app[FILES].get(tenant, file_id)
    if record["purpose"] != "batch":
        raise InvalidRequest(
            f"File {file_id} has purpose '{record['purpose']}'; a batch needs purpose 'batch'.",
            param="input_file_id",
        )
    fields = await request.app[BATCHES].create(tenant, caller.key_id, endpoint, file_id, metadata)
    return respond(request, render(fields))


async def retrieve(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    return respond(request, render(await request.app[BATCHES].get(tenant, request.match_info["id"])))


async def cancel(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    return respond(request, render(await request.app[BATCHES].cancel(tenant, request.match_info["id"])))


async def list_batches(request: web.Request) -> web.Response:
    request.app[BATCHES].kv.require_reachable()
    found = [render(fields) for fields in await request.app[BATCHES].listed(_tenant(request), "openai")]
    return respond(request, page(found, request.query))


async def admin_list(request: web.Request) -> web.Response:
    """``GET /admin/batches?tenant=&status=``: every tenant's batches (OpenAI's and Anthropic's), for an admin
    key; each with its ``tenant`` and ``kind``."""
    from .admin import require_admin

    require_admin(request)
    request.app[BATCHES].kv.require_reachable()
    status = request.query.get("status")
    found = [
        {**render(fields), "tenant": fields["tenant"], "kind": fields.get("kind", "openai")}
        for fields in await request.app[BATCHES].listed(request.query.get("tenant"))
        if status is None or status_of(fields) == status
    ]
    return respond(request, page(found, request.query, default_limit=1000))
