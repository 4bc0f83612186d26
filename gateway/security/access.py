"""Who may reach what: private listeners for admin and metrics, the admin allowlist, admin roles, /metrics
access, tenant key scopes; and the audit record of every admin request, allowed or denied.

A middleware inside the app's main one, so its refusals are answered in OpenAI's error format."""

from __future__ import annotations

import functools
import time
from typing import Any

from aiohttp import web

from errors import AuthenticationFailed, GatewayError, NotFound, PermissionDenied

from ..auth import hash_key, presented_key
from ..config import GatewayConfig
from ..keys import GATEWAY
from . import roles
from .audit import AUDIT
from .config import KeyScope
from .network import PEER, Allowlist, peer_of

# port -> what it serves besides health checks: "metrics", "admin" (filled by server.py)
PRIVATE_PORTS = web.AppKey("private_ports", dict[int, frozenset[str]])
_HEALTH = ("/healthz", "/readyz")


def kind_of(path: str) -> str:
    if path == "/metrics":
        return "metrics"
    if path.startswith("/admin/"):
        return "admin"
    return "health" if path in _HEALTH else "api"


@functools.cache
def allowlist(cidrs: tuple[str, ...]) -> Allowlist:
    return Allowlist(cidrs)


_built: dict[int, tuple[GatewayConfig, dict[str, KeyScope]]] = {}


def _scopes(config: GatewayConfig) -> dict[str, KeyScope]:
    """Key scopes by key hash, built once per config object (kept with it, so its id cannot be reused)."""
    found = _built.get(id(config))
    if found is None or found[0] is not config:
        found = _built[id(config)] = (
            config,
            {
                key: scope
                for tenant in config.tenants
                for key_id, scope in tenant.key_scopes.items()
                for key in tenant.keys
                if key[7:19] == key_id
            },
        )
    return found[1]


@web.middleware
async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    config = request.app[GATEWAY].loaded.config
    peer = request[PEER] = peer_of(request, allowlist(config.server.trusted_proxies))
    private = request.app.get(PRIVATE_PORTS)
    kind = kind_of(request.path)
    on_private = False
    if private and kind != "health":
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = sockname[1] if sockname else None
        served_here = private.get(port) if port is not None else None
        owned = frozenset().union(*private.values())
        on_private = served_here is not None
        if (served_here is not None and kind not in served_here) or (served_here is None and kind in owned):
            raise NotFound(f"Invalid URL ({request.method} {request.path})")
    if kind == "api" and config.tenants and any(t.key_scopes for t in config.tenants):
        _check_scope(request, _scopes(config))
    if kind == "metrics" and not on_private:
        _check_metrics(request, config, peer.loopback)
    if kind != "admin":
        return await handler(request)
    audit = request.app.get(AUDIT)
    key = presented_key(request.headers)
    key_hash = hash_key(key) if key is not None else None
    actor = key_hash[7:19] if key_hash is not None else "anonymous"
    role = config.admin.roles.get(key_hash, "admin") if key_hash in config.admin.keys else None
    status = 500
    try:
        if role is not None:
            if config.admin.allowed_ips and not allowlist(config.admin.allowed_ips).admits(peer.ip):
                raise PermissionDenied(
                    "Admin keys are not accepted from this address (admin.allowed_ips).",
                    code="ip_not_allowed",
                )
            permission = roles.permission_for(request.method, request.path)
            if not roles.allows(role, permission):
                raise PermissionDenied(f"Role {role!r} does not have {permission!r} (admin.roles).")
        response = await handler(request)
        status = response.status
        return response
    except GatewayError as exc:
        status = exc.status
        raise
    finally:
        if audit is not None:
            outcome = "ok" if status < 400 else "denied" if status in (401, 403) else "failed"
            await audit.record(
                f"{request.method} {request.path}",
                actor=actor,
                role=role or "tenant-or-none",
                outcome=outcome,
                status=status,
                query=request.query_string or None,
                ip=str(peer.ip) if peer.ip else None,
            )


def _check_scope(request: web.Request, scopes: dict[str, KeyScope]) -> None:
    key = presented_key(request.headers)
    scope = scopes.get(hash_key(key)) if key is not None else None
    if scope is None:
        return
    if roles.expired(scope.expires, time.time()):
        raise AuthenticationFailed("This API key has expired.", code="key_expired")
    endpoint = roles.endpoint_of(request.path)
    if scope.endpoints is not None and not any(endpoint.startswith(e) for e in scope.endpoints):
        raise PermissionDenied(
            f"This API key may only call: {', '.join(scope.endpoints)}.", code="endpoint_not_allowed"
        )


def _check_metrics(request: web.Request, config: GatewayConfig, loopback: bool) -> None:
    access = config.server.metrics_access
    if access == "public" or (access == "loopback" and loopback):
        return
    key = presented_key(request.headers)
    if key is None:
        raise AuthenticationFailed(
            "/metrics needs an admin key (Authorization: Bearer ...), or a private "
            "listener (server.metrics_listen).",
            code="missing_api_key",
        )
    key_hash = hash_key(key)
    if key_hash not in config.admin.keys or not roles.allows(
        config.admin.roles.get(key_hash, "admin"), "metrics.read"
    ):
        raise PermissionDenied("/metrics needs an admin key.")
