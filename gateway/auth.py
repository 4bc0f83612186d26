"""API keys -> tenants. The config holds only SHA-256 hashes of keys; a key is never logged."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from errors import AuthenticationFailed, PermissionDenied

from .config import TenantConfig
from .security.network import Allowlist, Peer

KEY_PREFIX = "gw-"
_VERIFIED_MAX = 10_000


def hash_key(key: str) -> str:
    # surrogateescape: aiohttp decodes header bytes that are not UTF-8 that way; such a key is just wrong (401).
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: TenantConfig
    key_id: str  # the first 12 hex digits of the key's hash: names the key in logs, reveals nothing


class Authenticator:
    def __init__(self, tenants: tuple[TenantConfig, ...]) -> None:
        # The control plane's keys (created at runtime), by hash: set by gateway/controlplane.py. Looked up on
        # every use rather than remembered, since they expire and get revoked.
        self.runtime: Callable[[str], Caller | None] | None = None
        self._callers = {
            key_hash: Caller(tenant, key_hash[7:19]) for tenant in tenants for key_hash in tenant.keys
        }
        # mTLS: a verified client certificate, by fingerprint or common name, stands for a key of its tenant.
        self._certs = {
            name: Caller(tenant, "cert:" + name.removeprefix("sha256:").removeprefix("CN=")[:12])
            for tenant in tenants
            for name in tenant.client_certs
        }
        self._allowed = {
            tenant.name: Allowlist(tenant.allowed_ips) for tenant in tenants if tenant.allowed_ips
        }
        # Presented keys already verified, so that SHA-256 runs once per key rather than once per request.
        # Bounded; only valid keys enter it, so random keys cannot grow it.
        self._verified: dict[str, Caller] = {}

    def authenticate(self, headers: Mapping[str, str], peer: Peer | None = None) -> Caller:
        """The caller a key (or, without one, a verified client certificate) stands for; 401 for none, 403
        when the caller's tenant does not admit the peer's address."""
        caller = self._identify(headers, peer)
        if (
            self._allowed
            and caller.tenant.name in self._allowed
            and not self._allowed[caller.tenant.name].admits(peer.ip if peer else None)
        ):
            raise PermissionDenied(
                f"Tenant {caller.tenant.name!r} does not accept requests from this address "
                "(tenants[].allowed_ips).",
                code="ip_not_allowed",
            )
        return caller

    def _identify(self, headers: Mapping[str, str], peer: Peer | None) -> Caller:
        key = presented_key(headers)
        if key is None and peer is not None and peer.cert_fingerprint is not None:
            by_cert = self._certs.get(peer.cert_fingerprint) or self._certs.get(f"CN={peer.cert_cn}")
            if by_cert is not None:
                return by_cert
        if key is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        caller = self._verified.get(key)
        if caller is not None:
            return caller
        key_hash = hash_key(key)
        caller = self._callers.get(key_hash)
        if caller is None:
            caller = self.runtime(key_hash) if self.runtime is not None else None
            if caller is None:
                raise AuthenticationFailed("Incorrect API key provided.")
            return caller
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[key] = caller
        return caller


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for name in ("api-key", "x-api-key"):
        other = headers.get(name)
        if other:
            return other.strip()
    return None
