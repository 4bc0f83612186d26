"""The control plane: API keys and tenants made, rotated, expired and revoked at runtime through the admin API,
kept in the store layer (memory, or Redis shared by every replica) beside the YAML's own, which stay read-only.

What lives in the store (one hash tag, so one Redis Cluster slot): a hash of runtime keys by their SHA-256
hash (the key itself is shown once, when made, and never kept), a hash of runtime tenants by name, a version
counter bumped after every change and a list of change records (who, when, what). Each replica polls the
version every ``control_plane.poll_interval_s`` and, when it moved, reads the state again and hands it to its
gateway: the authenticator's runtime lookup (``Authenticator.runtime``) and admission's runtime tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from errors import InvalidRequest, NotFound, PermissionDenied
from policies.clock import Clock
from policies.stores.keyvalue import KeyValue

from .auth import Caller, hash_key, new_key
from .config import ControlPlaneConfig, TenantConfig
from .logs import get_logger
from .state import Gateway

_PREFIX = "gw:{cp}:"
KEYS, TENANTS, META, AUDIT = (_PREFIX + name for name in ("keys", "tenants", "meta", "audit"))
# What a runtime tenant may set: TenantConfig's fields but its name and keys (keys are made one by one).
TENANT_FIELDS = frozenset(TenantConfig.model_fields) - {"name", "keys"}


@dataclass(frozen=True, slots=True)
class RuntimeKey:
    key_hash: str
    tenant: str
    name: str
    created_at: float
    created_by: str
    expires_at: float | None = None

    @property
    def id(self) -> str:
        return self.key_hash[7:19]

    def public(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "source": "runtime",
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "expired": self.expires_at is not None and self.expires_at <= now,
        }


def _conflict(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, status=409, code="conflict")


class ControlPlane:
    """One per process (kept across config reloads). ``clock``: the time keys are made and expire by."""

    def __init__(self, kv: KeyValue, config: ControlPlaneConfig, clock: Clock) -> None:
        self._kv, self.config, self.clock = kv, config, clock
        self.keys: dict[str, RuntimeKey] = {}
        self.tenants: dict[str, TenantConfig] = {}
        self._version: str | None = None
        self._gateway: Gateway | None = None
        self._applied: tuple[int, int] | None = None  # (auth, admission) identities the state was given to
        self._poller: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    # -- replicas: reading the state and handing it to the gateway --

    async def refresh(self) -> bool:
        """Reads the state again if its version moved; returns whether it did."""
        version = (await self._kv.hash_get(META)).get("version", "0")
        if version == self._version:
            return False
        keys, tenants = await self._kv.hash_get(KEYS), await self._kv.hash_get(TENANTS)
        self.keys = {h: RuntimeKey(key_hash=h, **orjson.loads(v)) for h, v in keys.items()}
        self.tenants = {
            n: TenantConfig.model_validate({**orjson.loads(v), "name": n}) for n, v in tenants.items()
        }
        self._version = version
        self._applied = None
        return True

    def attach(self, gateway: Gateway) -> None:
        """Gives the state to ``gateway`` (again after a config reload replaced its authenticator)."""
        self._gateway = gateway
        applied = (id(gateway.auth), id(gateway.pipeline.admission))
        if applied == self._applied:
            return
        configured = {t.name for t in gateway.loaded.config.tenants}
        gateway.auth.runtime = self._lookup
        gateway.pipeline.admission.set_runtime_tenants(
            {name: t for name, t in self.tenants.items() if name not in configured}
        )
        self._applied = applied

    def _lookup(self, key_hash: str) -> Caller | None:
        entry = self.keys.get(key_hash)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= self.clock.time()):
            return None
        tenant = self.tenant(entry.tenant)
        return None if tenant is None else Caller(tenant, entry.id)

    def tenant(self, name: str) -> TenantConfig | None:
        """A tenant by name: the YAML's first, then the runtime ones."""
        if self._gateway is not None:
            for configured in self._gateway.loaded.config.tenants:
                if configured.name == name:
                    return configured
        return self.tenants.get(name)

    def tenant_names(self) -> list[str]:
        configured = [t.name for t in self._gateway.loaded.config.tenants] if self._gateway else []
        return configured + [name for name in self.tenants if name not in configured]

    async def start(self, app: web.Application, gateway_key: web.AppKey[Gateway]) -> None:
        await self.refresh()
        self.attach(app[gateway_key])
        self._poller = asyncio.create_task(self._poll(app, gateway_key))

    async def _poll(self, app: web.Application, gateway_key: web.AppKey[Gateway]) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.poll_interval_s)
                return
            try:
                await self.refresh()
            except Exception as exc:  # a store that fails closed: keep the last state, try again
                get_logger().warning("control plane refresh failed", error=str(exc))
            self.attach(app[gateway_key])

    async def close(self) -> None:
        # Stopped between polls, not cancelled inside one: a Redis command cut half-way leaves its connection
        # unreturned to the pool.
        self._stop.set()
        if self._poller is not None:
            await self._poller

    # -- changes: each one written, recorded, announced (the version) and applied here at once --

    async def _changed(self, who: str, action: str, target: str, detail: Mapping[str, Any]) -> None:
        record = {
            "ts": self.clock.time(),
            "who": who,
            "action": action,
            "target": target,
            "detail": dict(detail),
        }
        await self._kv.append(AUDIT, orjson.dumps(record).decode(), max_len=self.config.audit_max)
        await self._kv.hash_incr(META, "version")
        await self.refresh()
        if self._gateway is not None:
            self.attach(self._gateway)

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` change records, newest first."""
        return [orjson.loads(r) for r in reversed(await self._kv.items(AUDIT, -limit, -1))]

    def list_keys(self, tenant: str | None) -> list[dict[str, Any]]:
        now = self.clock.time()
        rows: list[dict[str, Any]] = []
        if self._gateway is not None:
            rows = [
                {
                    "id": h[7:19],
                    "tenant": t.name,
                    "name": None,
                    "source": "config",
                    "expires_at": None,
                    "expired": False,
                }
                for t in self._gateway.loaded.config.tenants
                for h in t.keys
            ]
        rows += [k.public(now) for k in sorted(self.keys.values(), key=lambda k: k.created_at)]
        return [row for row in rows if tenant is None or row["tenant"] == tenant]

    def _key(self, key_id: str) -> RuntimeKey:
        for entry in self.keys.values():
            if entry.id == key_id:
                return entry
        if any(row["id"] == key_id for row in self.list_keys(None)):
            raise PermissionDenied(f"Key {key_id} is defined in the YAML config; change it there.")
        raise NotFound(f"No key with id {key_id!r}.", param="id")

    async def create_key(
        self, who: str, tenant: str, name: str, expires_at: float | None
    ) -> tuple[str, RuntimeKey]:
        """Makes a key for ``tenant``; returns it (shown this once) and its record."""
        if self.tenant(tenant) is None:
            raise NotFound(f"No tenant named {tenant!r}.", param="tenant")
        key = new_key()
        entry = RuntimeKey(
            key_hash=hash_key(key),
            tenant=tenant,
            name=name,
            created_at=self.clock.time(),
            created_by=who,
            expires_at=expires_at,
        )
        await self._write_key(entry)
        await self._changed(
            who, "key.create", entry.id, {"tenant": tenant, "name": name, "expires_at": expires_at}
        )
        return key, entry

    async def _write_key(self, entry: RuntimeKey) -> None:
        fields = {
            "tenant": entry.tenant,
            "name": entry.name,
            "created_at": entry.created_at,
            "created_by": entry.created_by,
            "expires_at": entry.expires_at,
        }
        await self._kv.hash_set(KEYS, {entry.key_hash: orjson.dumps(fields).decode()})

    async def rotate_key(self, who: str, key_id: str, grace_s: float) -> tuple[str, RuntimeKey]:
        """A new key for the same tenant and name; the old one stops working after ``grace_s`` (0: now)."""
        old = self._key(key_id)
        key = new_key()
        entry = RuntimeKey(
            key_hash=hash_key(key),
            tenant=old.tenant,
            name=old.name,
            created_at=self.clock.time(),
            created_by=who,
            expires_at=old.expires_at,
        )
        await self._write_key(entry)
        if grace_s > 0:
            await self._write_key(replace(old, expires_at=self.clock.time() + grace_s))
        else:
            await self._kv.hash_delete(KEYS, old.key_hash)
        await self._changed(who, "key.rotate", old.id, {"new_id": entry.id, "grace_s": grace_s})
        return key, entry

    async def expire_key(self, who: str, key_id: str, expires_at: float | None) -> RuntimeKey:
        entry = replace(self._key(key_id), expires_at=expires_at)
        await self._write_key(entry)
        await self._changed(who, "key.expire", entry.id, {"expires_at": expires_at})
        return entry

    async def revoke_key(self, who: str, key_id: str) -> RuntimeKey:
        entry = self._key(key_id)
        await self._kv.hash_delete(KEYS, entry.key_hash)
        await self._changed(who, "key.revoke", entry.id, {"tenant": entry.tenant})
        return entry

    async def create_tenant(self, who: str, body: Mapping[str, Any], aliases: list[str]) -> TenantConfig:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("A tenant needs a name (a non-empty string).", param="name")
        if self.tenant(name) is not None:
            raise _conflict(f"A tenant named {name!r} already exists.", "name")
        tenant = _tenant({k: v for k, v in body.items() if k != "name"}, name, aliases)
        await self._write_tenant(tenant)
        await self._changed(who, "tenant.create", name, _settings(tenant))
        return tenant

    async def update_tenant(
        self, who: str, name: str, body: Mapping[str, Any], aliases: list[str]
    ) -> TenantConfig:
        """Changes some of a runtime tenant's settings (its limits, budget, model access...); others stay."""
        current = self.tenants.get(name)
        if current is None:
            if self.tenant(name) is not None:
                raise PermissionDenied(f"Tenant {name!r} is defined in the YAML config; change it there.")
            raise NotFound(f"No tenant named {name!r}.", param="name")
        tenant = _tenant({**_settings(current), **body}, name, aliases)
        await self._write_tenant(tenant)
        await self._changed(who, "tenant.update", name, dict(body))
        return tenant

    async def _write_tenant(self, tenant: TenantConfig) -> None:
        await self._kv.hash_set(TENANTS, {tenant.name: orjson.dumps(_settings(tenant)).decode()})


CONTROL = web.AppKey("control_plane", ControlPlane)


def _settings(tenant: TenantConfig) -> dict[str, Any]:
    return tenant.model_dump(mode="json", exclude={"name", "keys"}, exclude_defaults=True)


def _tenant(settings: Mapping[str, Any], name: str, aliases: list[str]) -> TenantConfig:
    unknown = set(settings) - TENANT_FIELDS
    if unknown:
        raise InvalidRequest(
            f"Unknown tenant field(s): {', '.join(sorted(unknown))}; known: "
            f"{', '.join(sorted(TENANT_FIELDS))}.",
            param=sorted(unknown)[0],
        )
    try:
        tenant = TenantConfig.model_validate({**settings, "name": name})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest(
            f"{'.'.join(map(str, first['loc']))}: {first['msg']}", param=str(first["loc"][0])
        ) from exc
    if tenant.models != "*":
        missing = [m for m in tenant.models if m not in aliases]
        if missing:
            raise InvalidRequest(f"No model alias named {missing[0]!r}.", param="models")
    return tenant


__all__ = ["CONTROL", "ControlPlane", "RuntimeKey"]
