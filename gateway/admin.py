"""The admin API under ``/admin/``: admin keys (``admin.keys`` in config) see everything; a tenant key
sees only its own tenant where an endpoint allows tenants at all (usage), and gets 403 elsewhere.

Every route is in ``ROUTES`` at the end: usage (the ledger), deployments (resilience), cache purge. Answers
are JSON (or the usage CSV) written by ``_reply``; errors are the error tree's, rendered by the middleware.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from errors import InvalidRequest, NotFound, PermissionDenied
from policies import ledger
from policies.clock import utc_day

from .auth import hash_key, presented_key
from .keys import GATEWAY, RECORD
from .security.network import PEER


@dataclass(frozen=True, slots=True)
class Principal:
    admin: bool
    tenant: str | None   # None for an admin key
    key_id: str


def principal(request: web.Request) -> Principal:
    """Who is asking: an admin key, or a tenant key. 401 for neither."""
    gateway = request.app[GATEWAY]
    key = presented_key(request.headers)
    record = request[RECORD]
    if key is not None:
        key_hash = hash_key(key)
        if key_hash in gateway.loaded.config.admin.keys:
            record.tenant, record.key_id = "admin", key_hash[7:19]
            return Principal(admin=True, tenant=None, key_id=key_hash[7:19])
    caller = gateway.auth.authenticate(request.headers, request.get(PEER))  # raises 401 in OpenAI's format
    record.tenant, record.key_id = caller.tenant.name, caller.key_id
    return Principal(admin=False, tenant=caller.tenant.name, key_id=caller.key_id)


def require_admin(request: web.Request) -> Principal:
    who = principal(request)
    if not who.admin:
        raise PermissionDenied("This endpoint needs an admin key (admin.keys in the gateway's config).")
    return who


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _reply(request: web.Request, data: Any) -> web.Response:
    request[RECORD].status = 200
    return web.Response(body=orjson.dumps(data), content_type="application/json",
                        headers={"x-request-id": request[RECORD].request_id})


async def _usage(request: web.Request) -> web.StreamResponse:
    """``GET /admin/usage?tenant=&from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=model|day|key|request&format=json|csv``:
    an admin key reads any tenant (all when ``tenant`` is left out), a tenant key its own."""
    who = principal(request)
    gateway = request.app[GATEWAY]
    query = request.query
    known = [t.name for t in gateway.loaded.config.tenants]
    asked = query.get("tenant")
    if not who.admin:
        if asked is not None and asked != who.tenant:
            raise PermissionDenied("A tenant key reads only its own tenant's usage.")
        tenants = [who.tenant or ""]
    elif asked is not None:
        if asked not in known:
            raise NotFound(f"No tenant named {asked!r}.")
        tenants = [asked]
    else:
        tenants = known
    group_by = query.get("group_by", "model")
    if group_by not in ledger.GROUPS:
        raise InvalidRequest(f"group_by must be one of {', '.join(ledger.GROUPS)}", param="group_by")
    fmt = query.get("format", "csv" if "text/csv" in request.headers.get("Accept", "") else "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv", param="format")
    today = utc_day(gateway.pipeline.admission.clock.time())  # the clock that named the ledger's days
    try:
        days = ledger.days_between(query.get("from", today), query.get("to", today))
    except ValueError as exc:
        raise InvalidRequest(f"from/to: {exc} (dates are YYYY-MM-DD, UTC)", param="from") from exc
    pipeline = gateway.pipeline
    rows = [row for tenant in tenants for row in await pipeline.usage(tenant, days, group_by)]  # type: ignore[arg-type]  # checked above
    if fmt == "csv":
        request[RECORD].status = 200
        return web.Response(text=ledger.to_csv(rows), content_type="text/csv",
                            headers={"x-request-id": request[RECORD].request_id})
    return _reply(request, {"object": "list", "from": days[0], "to": days[-1], "group_by": group_by, "data": rows})


async def _deployments(request: web.Request) -> web.Response:
    """GET /admin/deployments: every deployment with its circuit breaker, load and latency."""
    require_admin(request)
    return _reply(request, await request.app[GATEWAY].pipeline.resilience.deployments())


async def _purge_cache(request: web.Request) -> web.Response:
    """Purge a tenant's cached answers, or one alias's of that tenant: ``DELETE /admin/cache/{tenant}``,
    ``DELETE /admin/cache/{tenant}/{alias}``, or ``POST /admin/cache/purge`` with ``{"tenant", "alias"?}``."""
    require_admin(request)
    gateway = request.app[GATEWAY]
    if request.method == "POST":
        try:
            body = await request.json(loads=orjson.loads)
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("tenant"), str) or \
                not isinstance(body.get("alias", ""), str):
            raise InvalidRequest("Expected a JSON object {\"tenant\": string, \"alias\": string (optional)}.",
                                 param="tenant")
        tenant, alias = body["tenant"], body.get("alias")
    else:
        tenant, alias = request.match_info["tenant"], request.match_info.get("alias")
    config = gateway.loaded.config
    if not any(t.name == tenant for t in config.tenants):
        raise NotFound(f"No tenant named {tenant!r}.", param="tenant")
    if alias is not None and not any(m.name == alias for m in config.models):
        raise NotFound(f"No model alias named {alias!r}.", param="alias")
    purged = await gateway.pipeline.cache.purge(tenant, alias)
    return _reply(request, {"object": "cache.purge", "tenant": tenant, "alias": alias, "purged": purged})


# (method, path, handler): every admin route
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/admin/usage", _usage),
    ("GET", "/admin/deployments", _deployments),
    ("POST", "/admin/cache/purge", _purge_cache),
    ("DELETE", "/admin/cache/{tenant}", _purge_cache),
    ("DELETE", "/admin/cache/{tenant}/{alias}", _purge_cache),
)


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)


__all__ = ["Principal", "add_routes", "principal", "require_admin"]
