"""Worker roles for disaggregated serving (``python -m local_engine serve --role prefill|decode|both``).

A *prefill* worker adds ``POST /v1/disagg/prefill`` (body: ``{"chat": bool, "request": <an OpenAI
completion body>}``): it runs the prompt to its first token, leaves the KV with its connector and
answers ``{"kv_transfer_params": ...}``. Any worker continues such a handoff when that object comes
back as the ``kv_transfer_params`` field of an ordinary ``/v1/completions`` or ``/v1/chat/completions``
body; a *decode* worker is one that the router sends only those. ``GET /v1/disagg/status`` shows the
handoffs a prefill worker still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import web

from local_engine.kv_transfer import KVConnector, ShmConnector, TcpConnector
from local_engine.openai_api import OpenAIError, prefill_response
from local_engine.server import ENGINE

Role = Literal["prefill", "decode", "both"]
KV_CONNECTOR = web.AppKey("kv_connector", KVConnector)


def make_connector(
    transport: str, *, host: str = "127.0.0.1", port: int = 0, ttl_s: float = 30.0
) -> KVConnector:
    if transport == "shm":
        return ShmConnector(ttl_s=ttl_s)
    if transport == "tcp":
        return TcpConnector(host, port, ttl_s=ttl_s)
    raise ValueError(f"unknown KV transport {transport!r} (shm, tcp)")


async def _prefill(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        raise OpenAIError("request body is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("request"), dict):
        raise OpenAIError('body must be {"chat": bool, "request": {...}}')
    out = await prefill_response(
        request.app[ENGINE], body["request"], chat=bool(body.get("chat")), connector=request.app[KV_CONNECTOR]
    )
    return web.json_response(out)


async def _status(request: web.Request) -> web.Response:
    connector = request.app[KV_CONNECTOR]
    connector.sweep()
    return web.json_response({"transport": connector.transport, **connector.stats})


def add_prefill_routes(app: web.Application, connector: KVConnector, sweep_every_s: float = 1.0) -> None:
    """Make ``app`` (from :func:`local_engine.server.build_app`) a prefill worker handing off through ``connector``."""
    app[KV_CONNECTOR] = connector

    async def connector_ctx(app: web.Application) -> AsyncIterator[None]:
        await connector.start()

        async def sweep() -> None:
            while True:
                await asyncio.sleep(sweep_every_s)
                connector.sweep()

        task = asyncio.create_task(sweep())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await connector.close()

    app.cleanup_ctx.append(connector_ctx)
    app.router.add_post("/v1/disagg/prefill", _prefill)
    app.router.add_get("/v1/disagg/status", _status)
