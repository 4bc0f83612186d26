"""Admin roles and tenant key scopes.

Admin keys carry a role (``admin.roles``, by key hash; ``admin`` when not listed). What each may do:

    permission          admin  operator  billing  viewer   endpoints
    usage.read            x       x         x       x      GET /admin/usage
    deployments.read      x       x                 x      GET /admin/deployments
    requests.read         x       x                 x      GET /admin/requests
    metrics.read          x       x         x       x      GET /metrics (where it needs a key)
    cache.purge           x       x                        POST /admin/cache/purge, DELETE /admin/cache/...
    tenants.erase         x                                DELETE /admin/tenants/{tenant}/data
    audit.read            x                                GET /admin/audit

Tenant keys may be limited (``tenants[].key_scopes``, by key id) to some endpoints and may expire.
"""

from __future__ import annotations

import datetime
from typing import Literal

Role = Literal["admin", "operator", "billing", "viewer"]

PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset(
        {
            "usage.read",
            "deployments.read",
            "requests.read",
            "metrics.read",
            "cache.purge",
            "tenants.erase",
            "audit.read",
        }
    ),
    "operator": frozenset({"usage.read", "deployments.read", "requests.read", "metrics.read", "cache.purge"}),
    "billing": frozenset({"usage.read", "metrics.read"}),
    "viewer": frozenset({"usage.read", "deployments.read", "requests.read", "metrics.read"}),
}

# (method, path prefix) -> permission; first match wins
_ROUTES = (
    ("GET", "/admin/usage", "usage.read"),
    ("GET", "/admin/deployments", "deployments.read"),
    ("GET", "/admin/requests", "requests.read"),
    ("GET", "/metrics", "metrics.read"),
    ("POST", "/admin/cache/", "cache.purge"),
    ("DELETE", "/admin/cache/", "cache.purge"),
    ("DELETE", "/admin/tenants/", "tenants.erase"),
    ("GET", "/admin/audit", "audit.read"),
)


def permission_for(method: str, path: str) -> str:
    """The permission a request needs; an admin route not in the table needs the ``admin`` role."""
    for route_method, prefix, permission in _ROUTES:
        if method == route_method and path.startswith(prefix):
            return permission
    return "admin.all"


def allows(role: str, permission: str) -> bool:
    return role == "admin" or permission in PERMISSIONS.get(role, frozenset())


def endpoint_of(path: str) -> str:
    """``/v1/chat/completions`` -> ``chat/completions`` (the name key scopes use)."""
    return path.removeprefix("/v1/").removeprefix("/")


def expired(expires: datetime.datetime | None, now: float) -> bool:
    return expires is not None and expires.timestamp() <= now
