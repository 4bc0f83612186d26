"""Who may reach what: private listeners for admin and metrics, the admin allowlist, /metrics access.

A middleware inside the app's main one, so its refusals are answered in OpenAI's error format."""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from errors import AuthenticationFailed, NotFound, PermissionDenied

from ..auth import hash_key, presented_key
from ..keys import GATEWAY
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
    if kind == "admin" and config.admin.allowed_ips:
        key = presented_key(request.headers)
        if key is not None and hash_key(key) in config.admin.keys and \
                not allowlist(config.admin.allowed_ips).admits(peer.ip):
            raise PermissionDenied("Admin keys are not accepted from this address (admin.allowed_ips).",
                                   code="ip_not_allowed")
    if kind == "metrics" and not on_private:
        _check_metrics(request, config.server.metrics_access, config.admin.keys, peer.loopback)
    return await handler(request)


def _check_metrics(request: web.Request, access: str, admin_keys: tuple[str, ...], loopback: bool) -> None:
    if access == "public" or (access == "loopback" and loopback):
        return
    key = presented_key(request.headers)
    if key is None:
        raise AuthenticationFailed("/metrics needs an admin key (Authorization: Bearer ...), or a private "
                                   "listener (server.metrics_listen).", code="missing_api_key")
    if hash_key(key) not in admin_keys:
        raise PermissionDenied("/metrics needs an admin key.")
