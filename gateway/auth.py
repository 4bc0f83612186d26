"""API keys -> tenants. The config holds only SHA-256 hashes of keys; a key is never logged."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from errors import AuthenticationFailed

from .config import TenantConfig

KEY_PREFIX = "gw-"
_VERIFIED_MAX = 10_000


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


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
        self._callers = {key_hash: Caller(tenant, key_hash[7:19])
                         for tenant in tenants for key_hash in tenant.keys}
        # Presented keys already verified, so that SHA-256 runs once per key rather than once per request.
        # Bounded; only valid keys enter it, so random keys cannot grow it.
        self._verified: dict[str, Caller] = {}

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        key = presented_key(headers)
        if key is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", code="missing_api_key")
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
