"""``DELETE /admin/tenants/{tenant}/data``: erases what the gateway stores of a tenant's requests and says
what it erased (GDPR art. 17, HIPAA's disposal of PHI). The usage ledger is kept: it is the tenant's bill."""

from __future__ import annotations

import asyncio

from aiohttp import web

from errors import NotFound

from ..admin import require_admin
from ..keys import GATEWAY, RECORD
from ..requestlog import REQUEST_LOG
from ..responses import STORE


async def handle(request: web.Request) -> web.Response:
    require_admin(request)
    gateway = request.app[GATEWAY]
    tenant = request.match_info["tenant"]
    if not any(t.name == tenant for t in gateway.loaded.config.tenants):
        raise NotFound(f"No tenant named {tenant!r}.", param="tenant")
    erased = {
        "cache_entries": await gateway.pipeline.cache.purge(tenant),
        "stored_responses": await request.app[STORE].erase(tenant) if STORE in request.app else 0,
    }
    log = request.app.get(REQUEST_LOG)
    erased["request_log_records"] = await asyncio.to_thread(log.erase, tenant) if log is not None else 0
    request[RECORD].status = 200
    return web.json_response(
        {
            "object": "tenant.data.erased",
            "tenant": tenant,
            "erased": erased,
            "kept": {"usage_ledger": "billing records (tokens, cost) are kept for invoicing"},
        },
        headers={"x-request-id": request[RECORD].request_id},
    )
