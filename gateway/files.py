"""``/v1/files`` (OpenAI's Files API): upload (multipart, streamed to the blob store), list, retrieve,
content, delete. A file belongs to its tenant: another tenant's id is 404, as an unknown one.

Records live in the store layer's key/value surface (shared by every process with Redis); bytes in ``Blobs``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from errors import InvalidRequest, NotFound, PayloadTooLarge
from policies.clock import Clock
from policies.stores.keyvalue import KeyValue

from .blobs import CHUNK, Blobs
from .config import FilesConfig
from .keys import GATEWAY, RECORD

PURPOSES = ("batch", "fine-tune", "assistants", "vision", "user_data", "evals", "batch_output")
_MULTIPART_SLACK = 64 * 1024  # the multipart framing and the other fields around the file


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class Files:
    """A tenant's files: records in ``kv``, bytes in ``blobs``."""

    def __init__(
        self,
        kv: KeyValue,
        blobs: Blobs,
        config: FilesConfig,
        clock: Clock,
        retention: Callable[[str], float | None] = lambda tenant: None,
    ) -> None:
        """``retention``: a tenant's own retention in seconds, when it has one (kept no longer than ``ttl_s``)."""
        self.kv, self.blobs, self.config, self.clock = kv, blobs, config, clock
        self.retention = retention

    def _ttl(self, tenant: str) -> float:
        own = self.retention(tenant)
        return self.config.ttl_s if own is None else min(own, self.config.ttl_s)

    async def create(
        self,
        tenant: str,
        filename: str,
        purpose: str,
        chunks: AsyncIterator[bytes],
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        file_id = new_id("file-")
        size = await self.blobs.write(file_id, chunks, max_bytes)
        record = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(self.clock.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        await self.kv.set(_key(tenant, file_id), orjson.dumps(record).decode(), self._ttl(tenant))
        await self.kv.append(f"files:{tenant}", file_id, ttl_s=self.config.ttl_s)
        return record

    async def get(self, tenant: str, file_id: str) -> dict[str, Any]:
        raw = await self.kv.get(_key(tenant, file_id))
        if raw is None:
            self.kv.require_reachable()  # read from this process's memory while Redis is away: no proof
            raise NotFound(f"No such File object: {file_id}", param="id")
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def list(self, tenant: str, purpose: str | None = None) -> list[dict[str, Any]]:
        """Newest first (503 while Redis is away: a listing from this process's memory would be partial)."""
        self.kv.require_reachable()
        found = []
        for file_id in reversed(await self.kv.items(f"files:{tenant}")):
            raw = await self.kv.get(_key(tenant, file_id))
            if raw is not None:
                record = orjson.loads(raw)
                if purpose is None or record["purpose"] == purpose:
                    found.append(record)
        return found

    async def content(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        await self.get(tenant, file_id)
        chunks = aiter(self.blobs.read(file_id))
        try:  # the first chunk read before any byte goes out: a blob that is gone or cannot be opened is a 404
            first = await anext(chunks, b"")
        except FileNotFoundError:
            raise NotFound(f"No such File object: {file_id}", param="id") from None
        return _then(first, chunks)

    async def drop_expired(self, tenant: str) -> int:
        """Deletes the bytes of the tenant's files whose record has expired; returns how many."""
        ids = await self.kv.items(f"files:{tenant}")
        gone = {i for i in ids if await self.kv.get(_key(tenant, i)) is None}
        if not gone:
            return 0
        for file_id in gone:
            await self.blobs.delete(file_id)
        kept = [i for i in await self.kv.items(f"files:{tenant}") if i not in gone]
        await self.kv.delete(f"files:{tenant}")
        for file_id in kept:
            await self.kv.append(f"files:{tenant}", file_id, ttl_s=self.config.ttl_s)
        return len(gone)

    async def delete(self, tenant: str, file_id: str) -> None:
        await self.get(tenant, file_id)
        await self.kv.delete(_key(tenant, file_id))
        await self.blobs.delete(file_id)


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


def _key(tenant: str, file_id: str) -> str:
    return f"file:{tenant}:{file_id}"


FILES = web.AppKey("files", Files)


def _tenant(request: web.Request) -> str:
    caller = request.app[GATEWAY].auth.authenticate(request.headers)
    record = request[RECORD]
    record.tenant, record.key_id = caller.tenant.name, caller.key_id
    return caller.tenant.name


def respond(request: web.Request, data: Any, status: int = 200) -> web.Response:
    request[RECORD].status = status
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={"x-request-id": request[RECORD].request_id},
    )


async def upload(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    files = request.app[FILES]
    limit = files.config.max_bytes
    if request.content_length is not None and request.content_length > limit + _MULTIPART_SLACK:
        raise PayloadTooLarge(f"File exceeds the maximum size of {limit} bytes.")
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("Expected a multipart/form-data body with the fields 'file' and 'purpose'.")
    reader = await request.multipart()
    purpose: str | None = None
    created: dict[str, Any] | None = None
    async for part in reader:
        if not isinstance(part, BodyPartReader):  # a nested multipart: not a form field
            continue
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":

            async def chunks(p: BodyPartReader = part) -> AsyncIterator[bytes]:
                while chunk := await p.read_chunk(CHUNK):
                    yield chunk

            created = await files.create(
                tenant, part.filename or "upload.jsonl", purpose or "", chunks(), limit
            )
    if created is None:
        raise InvalidRequest("Missing required parameter: 'file'.", param="file")
    if purpose not in PURPOSES:
        await files.delete(tenant, created["id"])
        raise InvalidRequest(
            f"Invalid value for 'purpose': {purpose!r}. Expected one of {', '.join(PURPOSES)}.",
            param="purpose",
        )
    if created["purpose"] != purpose:  # the purpose field came after the file
        created["purpose"] = purpose
        await files.kv.set(_key(tenant, created["id"]), orjson.dumps(created).decode(), files._ttl(tenant))
    return respond(request, created)


async def list_files(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    found = await request.app[FILES].list(tenant, request.query.get("purpose"))
    return respond(request, page(found, request.query, default_limit=10000))


def page(
    found: list[dict[str, Any]],
    query: Any,
    default_limit: int = 20,
    *,
    max_limit: int = 10000,
    ids: bool = True,
    orderable: bool = True,
) -> dict[str, Any]:
    """OpenAI's cursor page: ``after`` (an id), ``limit``; newest first unless ``order=asc`` (where the list
    takes an order); ``first_id``/``last_id`` where the list has them (``ids``)."""
    if orderable and query.get("order") == "asc":
        found = found[::-1]
    after = query.get("after")
    if after:
        known = [item["id"] for item in found]
        found = found[known.index(after) + 1 :] if after in known else []
    try:
        limit = max(1, min(int(query.get("limit", default_limit)), max_limit))
    except ValueError as exc:
        raise InvalidRequest("Invalid 'limit': expected an integer.", param="limit") from exc
    data = found[:limit]
    listed: dict[str, Any] = {"object": "list", "data": data}
    if ids:
        listed["first_id"] = data[0]["id"] if data else None
        listed["last_id"] = data[-1]["id"] if data else None
    listed["has_more"] = len(found) > limit
    return listed


async def retrieve(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    return respond(request, await request.app[FILES].get(tenant, request.match_info["id"]))


async def content(request: web.Request) -> web.StreamResponse:
    tenant = _tenant(request)
    file_id = request.match_info["id"]
    files = request.app[FILES]
    record = await files.get(tenant, file_id)
    chunks = await files.content(tenant, file_id)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(record["bytes"]),
            "x-request-id": request[RECORD].request_id,
        }
    )
    await response.prepare(request)
    request[RECORD].status = 200
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    file_id = request.match_info["id"]
    await request.app[FILES].delete(tenant, file_id)
    return respond(request, {"id": file_id, "object": "file", "deleted": True})
