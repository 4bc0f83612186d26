"""Records that belong to a tenant (a batch, a fine-tuning job) on the store layer's key-value surface.

A record is the hash ``PREFIX:ID``; its id is listed in ``PREFIXs:TENANT`` and in ``PREFIXs`` (every tenant's,
what the background runners walk), all with the kind's TTL. Another tenant's record is not found.
"""

from __future__ import annotations

from typing import Any

from errors import InvalidRequest, NotFound
from policies.clock import Clock
from policies.stores.keyvalue import KeyValue


class TenantRecords:
    def __init__(self, kv: KeyValue, clock: Clock, prefix: str, ttl_s: float, what: str, param: str) -> None:
        self.kv, self.clock = kv, clock
        self._prefix, self._ttl_s, self._what, self._param = prefix, ttl_s, what, param

    def now(self) -> int:
        return int(self.clock.time())

    async def add(self, tenant: str, record_id: str, fields: dict[str, str]) -> None:
        await self.kv.hash_set(f"{self._prefix}:{record_id}", fields, self._ttl_s)
        await self.kv.append(f"{self._prefix}s:{tenant}", record_id, ttl_s=self._ttl_s)
        await self.kv.append(f"{self._prefix}s", record_id, ttl_s=self._ttl_s)

    async def fields(self, record_id: str) -> dict[str, str]:
        return await self.kv.hash_get(f"{self._prefix}:{record_id}")

    async def get(self, tenant: str, record_id: str) -> dict[str, str]:
        fields = await self.fields(record_id)
        if not fields:
            self.kv.require_reachable()  # read from this process's memory while Redis is away: no proof
        if not fields or fields.get("tenant") != tenant:
            raise NotFound(f"No {self._what} found with id '{record_id}'.", param=self._param)
        return fields

    async def update(self, record_id: str, **fields: str) -> None:
        await self.kv.hash_set(f"{self._prefix}:{record_id}", fields, self._ttl_s)

    async def listed(self, tenant: str | None) -> list[dict[str, str]]:
        """The records of ``tenant`` (every tenant's: None), newest first."""
        found = []
        for record_id in dict.fromkeys(reversed(await self._listed_ids(tenant))):
            fields = await self.fields(record_id)
            if fields:
                found.append(fields)
        return found

    async def _listed_ids(self, tenant: str | None) -> list[str]:
        """The ids of ``tenant`` (every tenant's: None) as they were added, oldest first."""
        return await self.kv.items(f"{self._prefix}s" if tenant is None else f"{self._prefix}s:{tenant}")


def metadata_of(body: dict[str, Any]) -> dict[str, str] | None:
    """A request's ``metadata`` as OpenAI takes it: at most 16 string pairs, keys of 64 characters at most and
    values of 512."""
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict)
        or len(metadata) > 16
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        raise InvalidRequest(
            "Invalid 'metadata': at most 16 string keys (64 characters) and string values (512 characters).",
            param="metadata",
        )
    return metadata
