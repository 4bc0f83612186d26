"""Stored Responses (``store: true``): kept per tenant for ``GET``/``DELETE /v1/responses/{id}``, their input
items, and ``previous_response_id``.

Kept in the store layer's key/value surface (``policies/stores/keyvalue.py``): in this process's memory, or
in Redis, where every gateway process sees them (a conversation continues on whichever process the next
request reaches). One string per response under ``gw:resp:{tenant}:{id}``, expiring after ``ttl_s``; a
tenant's ids never reach another tenant (the tenant is part of the key). Redis failing follows the layer's
policy: fail open reads this process's memory (a stored response is then not found), fail closed is a 503.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .stores.keyvalue import KeyValue


@dataclass(frozen=True, slots=True)
class Stored:
    response: dict[str, Any]  # the response object as the client got it
    input: list[dict[str, Any]]  # this request's input items
    context: list[dict[str, Any]]  # the items before them (earlier turns), for previous_response_id


class Sealer(Protocol):
    """Seals a stored value (``gateway/security/crypto.py``: AES-256-GCM when ``encryption`` is configured)."""

    def seal(self, text: str, context: str) -> str: ...

    def open(self, value: str, context: str) -> str | None: ...


class StoredResponses:
    def __init__(self, kv: KeyValue, ttl_s: float, sealer: Sealer | None = None) -> None:
        self._kv = kv
        self._ttl_s = ttl_s
        self._sealer = sealer

    @staticmethod
    def _key(tenant: str, response_id: str) -> str:
        return f"gw:resp:{tenant}:{response_id}"

    async def get(self, tenant: str, response_id: str) -> Stored | None:
        """The tenant's stored response; None if it is unknown, expired, or another tenant's."""
        key = self._key(tenant, response_id)
        raw = await self._kv.get(key)
        if raw is not None and self._sealer is not None:
            raw = self._sealer.open(raw, key)  # None: sealed with a key no longer configured: absent
        if raw is None:
            return None
        data = orjson.loads(raw)
        return Stored(data["response"], data["input"], data["context"])

    def require_reachable(self) -> None:
        """503 while the store answers from this process's memory (``KeyValue.require_reachable``)."""
        self._kv.require_reachable()

    async def put(self, tenant: str, response_id: str, stored: Stored, ttl_s: float | None = None) -> None:
        """Keeps ``stored`` for ``ttl_s`` (the tenant's retention) or the store's own TTL, whichever is shorter."""
        ttl = self._ttl_s if ttl_s is None else min(ttl_s, self._ttl_s)
        key = self._key(tenant, response_id)
        value = orjson.dumps(
            {"response": stored.response, "input": stored.input, "context": stored.context}
        ).decode()
        await self._kv.set(key, value if self._sealer is None else self._sealer.seal(value, key), ttl)
        # the tenant's ids, so that erasing a tenant needs no key scan (none on Redis Cluster)
        await self._kv.append(self._key(tenant, "~ids"), response_id, ttl_s=self._ttl_s)

    async def erase(self, tenant: str) -> int:
        """Removes every response the tenant stored; returns how many there were."""
        ids = await self._kv.items(self._key(tenant, "~ids"))
        erased = await self._kv.delete(*(self._key(tenant, i) for i in ids)) if ids else 0
        await self._kv.delete(self._key(tenant, "~ids"))
        return erased

    async def delete(self, tenant: str, response_id: str) -> bool:
        return await self._kv.delete(self._key(tenant, response_id)) > 0
