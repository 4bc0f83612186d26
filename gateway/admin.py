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
from policies.variant_history import VariantHistory

from .auth import hash_key, presented_key
from .controlplane import CONTROL
from .keys import GATEWAY, RECORD
from .security.network import PEER


@dataclass(frozen=True, slots=True)
class Principal:
    admin: bool
    tenant: str | None  # None for an admin key
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
    return web.Response(
        body=orjson.dumps(data),
        content_type="application/json",
        headers={"x-request-id": request[RECORD].request_id},
    )


async def _usage(request: web.Request) -> web.StreamResponse:
    """``GET /admin/usage?tenant=&from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=model|day|key|request|source&format=json|csv``:
    an admin key reads any tenant (all when ``tenant`` is left out), a tenant key its own."""
    who = principal(request)
    gateway = request.app[GATEWAY]
    query = request.query
    known = request.app[CONTROL].tenant_names()
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
        return web.Response(
            text=ledger.to_csv(rows),
            content_type="text/csv",
            headers={"x-request-id": request[RECORD].request_id},
        )
    return _reply(
        request, {"object": "list", "from": days[0], "to": days[-1], "group_by": group_by, "data": rows}
    )


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
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("tenant"), str)
            or not isinstance(body.get("alias", ""), str)
        ):
            raise InvalidRequest(
                'Expected a JSON object {"tenant": string, "alias": string (optional)}.', param="tenant"
            )
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


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=orjson.loads)
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("Expected a JSON object as the request body.")
    return body


def _number(body: dict[str, Any], name: str, default: float | None = None) -> float | None:
    value = body.get(name, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
        raise InvalidRequest(f"{name} must be a non-negative number (seconds).", param=name)
    return None if value is None else float(value)


def _expiry(body: dict[str, Any], now: float) -> float | None:
    """``expires_at`` (Unix seconds) or ``expires_in_s`` (from now); neither: never."""
    at, within = _number(body, "expires_at"), _number(body, "expires_in_s")
    if at is not None and within is not None:
        raise InvalidRequest("Give expires_at or expires_in_s, not both.", param="expires_at")
    return at if within is None else now + within


async def _whoami(request: web.Request) -> web.Response:
    """``GET /admin/whoami``: who the key is (admin, or which tenant) and today's UTC day by the gateway's clock."""
    who = principal(request)
    today = utc_day(request.app[GATEWAY].pipeline.admission.clock.time())
    return _reply(request, {"admin": who.admin, "tenant": who.tenant, "key_id": who.key_id, "today": today})


async def _keys(request: web.Request) -> web.Response:
    """``GET /admin/keys?tenant=``: every key (the YAML's by id only, the runtime ones with their details);
    a tenant key lists its own tenant's."""
    who = principal(request)
    tenant = request.query.get("tenant")
    if not who.admin:
        if tenant is not None and tenant != who.tenant:
            raise PermissionDenied("A tenant key lists only its own tenant's keys.")
        tenant = who.tenant
    return _reply(request, {"object": "list", "data": request.app[CONTROL].list_keys(tenant)})


def _made(request: web.Request, key: str, entry: Any) -> web.Response:
    response = _reply(request, {**entry.public(request.app[CONTROL].clock.time()), "key": key})
    response.set_status(201)
    request[RECORD].status = 201
    return response


async def _create_key(request: web.Request) -> web.Response:
    """``POST /admin/keys`` ``{"tenant", "name"?, "expires_at"? | "expires_in_s"?}``: the key, shown once."""
    who = require_admin(request)
    body = await _json_body(request)
    control = request.app[CONTROL]
    tenant, name = body.get("tenant"), body.get("name", "")
    if not isinstance(tenant, str) or not isinstance(name, str):
        raise InvalidRequest("tenant (and name, if given) must be strings.", param="tenant")
    key, entry = await control.create_key(who.key_id, tenant, name, _expiry(body, control.clock.time()))
    return _made(request, key, entry)


async def _rotate_key(request: web.Request) -> web.Response:
    """``POST /admin/keys/{id}/rotate`` ``{"grace_s"?}``: a new key; the old one works ``grace_s`` longer."""
    who = require_admin(request)
    body = await _json_body(request) if request.can_read_body else {}
    key, entry = await request.app[CONTROL].rotate_key(
        who.key_id, request.match_info["id"], _number(body, "grace_s", 0.0) or 0.0
    )
    return _made(request, key, entry)


async def _expire_key(request: web.Request) -> web.Response:
    """``PATCH /admin/keys/{id}`` ``{"expires_at" | "expires_in_s"}`` (null: never)."""
    who = require_admin(request)
    control = request.app[CONTROL]
    entry = await control.expire_key(
        who.key_id, request.match_info["id"], _expiry(await _json_body(request), control.clock.time())
    )
    return _reply(request, entry.public(control.clock.time()))


async def _revoke_key(request: web.Request) -> web.Response:
    """``DELETE /admin/keys/{id}``: the key stops working on every replica within a poll interval."""
    who = require_admin(request)
    entry = await request.app[CONTROL].revoke_key(who.key_id, request.match_info["id"])
    return _reply(request, {"id": entry.id, "object": "key", "revoked": True})


def _tenant_view(tenant: Any, source: str) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "source": source,
        **tenant.model_dump(mode="json", exclude={"name", "keys"}, exclude_none=True),
    }


async def _tenants(request: web.Request) -> web.Response:
    """``GET /admin/tenants``: the YAML's tenants (read-only) and the runtime ones."""
    require_admin(request)
    control, config = request.app[CONTROL], request.app[GATEWAY].loaded.config
    configured = {t.name for t in config.tenants}
    data = [_tenant_view(t, "config") for t in config.tenants] + [
        _tenant_view(t, "runtime") for name, t in control.tenants.items() if name not in configured
    ]
    return _reply(request, {"object": "list", "data": data})


async def _create_tenant(request: web.Request) -> web.Response:
    """``POST /admin/tenants`` ``{"name", "models"?, "limits"?, "budget"?, ...}`` (a tenant's YAML fields)."""
    who = require_admin(request)
    aliases = [m.name for m in request.app[GATEWAY].loaded.config.models]
    tenant = await request.app[CONTROL].create_tenant(who.key_id, await _json_body(request), aliases)
    response = _reply(request, _tenant_view(tenant, "runtime"))
    response.set_status(201)
    request[RECORD].status = 201
    return response


async def _update_tenant(request: web.Request) -> web.Response:
    """``PATCH /admin/tenants/{name}``: changes the fields given (limits, budget, models...) of a runtime tenant."""
    who = require_admin(request)
    aliases = [m.name for m in request.app[GATEWAY].loaded.config.models]
    tenant = await request.app[CONTROL].update_tenant(
        who.key_id, request.match_info["name"], await _json_body(request), aliases
    )
    return _reply(request, _tenant_view(tenant, "runtime"))


async def _audit(request: web.Request) -> web.Response:
    """``GET /admin/control-plane/changes?limit=``: the control plane's change records, newest first (the
    hash-chained audit log of every admin request is ``GET /admin/audit``)."""
    require_admin(request)
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 10000:
        raise InvalidRequest("limit must be an integer from 1 to 10000.", param="limit")
    return _reply(request, {"object": "list", "data": await request.app[CONTROL].audit(int(raw))})


def _versions(request: web.Request) -> VariantHistory:
    versions = request.app[GATEWAY].pipeline.versions
    if versions is None:
        raise NotFound("This gateway keeps no variants.")
    return versions


async def _variants(request: web.Request) -> web.Response:
    """``GET /admin/aliases/{alias}/variants``: the variants in force; ``POST`` the same path with
    ``{"action": "add"|"weights"|"promote"|"rollback", "why": "...", ...}``: one change, recorded
    (docs/variants.md#version-control)."""
    who = require_admin(request)
    versions = _versions(request)
    alias = request.match_info["alias"]
    if request.method == "GET":
        return _reply(
            request, {"object": "alias.variants", "alias": alias, "variants": versions.current(alias)}
        )
    body = await _json_body(request)
    if not isinstance(body.get("action"), str):
        raise InvalidRequest('Expected a JSON object {"action": string, "why": string, ...}.', param="action")
    why = body.get("why")
    if not isinstance(why, str) or not why.strip():
        raise InvalidRequest("Say why: `why` is recorded with the change.", param="why")
    entry = await versions.change(alias, f"admin:{who.key_id}", body["action"], why, body)
    return _reply(request, {"object": "alias.variants.change", "alias": alias, **entry})


async def _history(request: web.Request) -> web.Response:
    """``GET /admin/aliases/{alias}/history``: every change to the alias's variants, oldest first."""
    require_admin(request)
    alias = request.match_info["alias"]
    data = await _versions(request).history(alias)
    return _reply(request, {"object": "list", "alias": alias, "data": data})


def _lora_host(request: web.Request) -> Any:
    """The backend of ``{deployment}`` when it is a local engine (in process or managed workers)."""
    deployment = request.match_info["deployment"]
    for backend in request.app[GATEWAY].backends:
        if backend.id == deployment and hasattr(backend, "add_lora"):
            return backend
    raise NotFound(
        f"No local engine deployment named {deployment!r} (LoRA adapters live on provider: local).",
        param="deployment",
    )


async def _lora(request: web.Request) -> web.Response:
    """LoRA adapters of a local deployment (docs/lora.md): ``GET /admin/lora/{deployment}`` lists them,
    ``POST`` ``{"lora_name", "lora_path"}`` adds one, ``DELETE`` ``{"lora_name"}`` (or ``?lora_name=``) removes one."""
    require_admin(request)
    host = _lora_host(request)
    if request.method == "GET":
        return _reply(request, {"object": "list", "data": await host.list_loras()})
    body = await _json_body(request) if request.method == "POST" or request.can_read_body else {}
    name = body.get("lora_name", request.query.get("lora_name"))
    if not isinstance(name, str) or not name:
        raise InvalidRequest("lora_name must be a non-empty string.", param="lora_name")
    if request.method == "DELETE":
        await host.remove_lora(name)
        return _reply(request, {"object": "lora_adapter", "name": name, "deleted": True})
    path = body.get("lora_path")
    if not isinstance(path, str) or not path:
        raise InvalidRequest(
            "lora_path must be a non-empty string (a PEFT adapter directory).", param="lora_path"
        )
    return _reply(request, await host.add_lora(name, path))


async def _variant_stats(request: web.Request) -> web.Response:
    """``GET /admin/aliases/{alias}/variants/stats``: this process's canary windows and shadow results."""
    require_admin(request)
    alias = request.match_info["alias"]
    versions = _versions(request)
    versions.current(alias)  # 404 for an alias without variants
    shadows = request.app[GATEWAY].pipeline.shadows
    return _reply(
        request,
        {
            "object": "alias.variants.stats",
            "alias": alias,
            "canary": versions.canary.windows(alias),
            "shadow": shadows.view(alias) if shadows is not None else {},
        },
    )


# (method, path, handler): every admin route
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/admin/usage", _usage),
    ("GET", "/admin/deployments", _deployments),
    ("POST", "/admin/cache/purge", _purge_cache),
    ("DELETE", "/admin/cache/{tenant}", _purge_cache),
    ("DELETE", "/admin/cache/{tenant}/{alias}", _purge_cache),
    ("GET", "/admin/aliases/{alias}/variants", _variants),
    ("POST", "/admin/aliases/{alias}/variants", _variants),
    ("GET", "/admin/aliases/{alias}/history", _history),
    ("GET", "/admin/aliases/{alias}/variants/stats", _variant_stats),
    ("GET", "/admin/whoami", _whoami),
    ("GET", "/admin/keys", _keys),
    ("POST", "/admin/keys", _create_key),
    ("POST", "/admin/keys/{id}/rotate", _rotate_key),
    ("PATCH", "/admin/keys/{id}", _expire_key),
    ("DELETE", "/admin/keys/{id}", _revoke_key),
    ("GET", "/admin/tenants", _tenants),
    ("POST", "/admin/tenants", _create_tenant),
    ("PATCH", "/admin/tenants/{name}", _update_tenant),
    ("GET", "/admin/control-plane/changes", _audit),
    ("GET", "/admin/lora/{deployment:.+}", _lora),
    ("POST", "/admin/lora/{deployment:.+}", _lora),
    ("DELETE", "/admin/lora/{deployment:.+}", _lora),
)


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)


__all__ = ["Principal", "add_routes", "principal", "require_admin"]
