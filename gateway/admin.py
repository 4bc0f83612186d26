"""The admin API under ``/admin/``: admin keys (``admin.keys`` in config) see everything; a tenant key
sees only its own tenant where an endpoint allows tenants at all (usage), and gets 403 elsewhere.

Each area adds its handlers to ``ROUTES``: usage (policies), deployments (resilience), cache purge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from backends.errors import PermissionDenied

from .auth import hash_key, presented_key
from .keys import GATEWAY, RECORD


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
    caller = gateway.auth.authenticate(request.headers)  # raises 401 in OpenAI's format
    record.tenant, record.key_id = caller.tenant.name, caller.key_id
    return Principal(admin=False, tenant=caller.tenant.name, key_id=caller.key_id)


def require_admin(request: web.Request) -> Principal:
    who = principal(request)
    if not who.admin:
        raise PermissionDenied("This endpoint needs an admin key (admin.keys in the gateway's config).")
    return who


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (method, path, handler); registered by build_app
ROUTES: list[tuple[str, str, Handler]] = []


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)


__all__ = ["Principal", "add_routes", "principal", "require_admin"]
