"""The store layer: one per gateway process, one Redis client (or one cluster client) for every policy.

``StoreLayer`` holds the ``stores:`` config, the client (none without ``redis_url``: everything in this
process's memory), the one failure policy (``StoreHealth``) and the generic key/value surface (``kv``). Each
policy builds its own store on it: admission's limits and ledger (``AdmissionStore``), the breakers, the
exact cache; each uses ``layer.redis`` for its atomic scripts and ``layer.health`` for fail-open /
fail-closed. The app opens the client in its cleanup context and closes it at shutdown; a reloaded config
keeps the layer (changing how Redis is reached needs a restart).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from ..config import StoresConfig
from .health import REDIS_ERRORS, StoreHealth
from .keyvalue import FailoverKeyValue, KeyValue, MemoryKeyValue, RedisKeyValue

# The fields that decide the client and the failure policy: a reload that changes one needs a restart.
CONNECTION_FIELDS = ("redis_url", "redis_cluster", "redis_timeout_s", "redis_max_connections", "on_redis_error",
                     "retry_redis_after_s")


class StoreLayer:
    def __init__(self, config: StoresConfig | None = None) -> None:
        self.config = config or StoresConfig()
        self.health = StoreHealth(self.config.on_redis_error, self.config.retry_redis_after_s)
        self.redis: Any = None
        self._shas: dict[str, str] = {}
        self.kv: KeyValue = MemoryKeyValue() if not self.shared else FailoverKeyValue(
            RedisKeyValue(lambda: self.redis), MemoryKeyValue(), self.health)

    @property
    def shared(self) -> bool:
        """Whether state lives in Redis (shared by every process) rather than in this process's memory."""
        return self.config.redis_url is not None

    @property
    def name(self) -> str:
        return "memory" if not self.shared else "redis-cluster" if self.config.redis_cluster else "redis"

    def serves(self, config: StoresConfig) -> bool:
        """Whether this layer's client and policy are what ``config`` asks for (else: a restart applies it)."""
        return all(getattr(self.config, f) == getattr(config, f) for f in CONNECTION_FIELDS)

    async def open(self) -> None:
        """Creates the client (no connection is made yet, except a cluster's slot map: an unreachable cluster
        is a degraded store, not a failed start)."""
        if not self.shared or self.redis is not None:
            return
        c = self.config
        assert c.redis_url is not None
        if c.redis_cluster:
            from redis.asyncio.cluster import RedisCluster

            self.redis = RedisCluster.from_url(c.redis_url, decode_responses=True, socket_timeout=c.redis_timeout_s,
                                               socket_connect_timeout=c.redis_timeout_s,
                                               max_connections=c.redis_max_connections)
            try:
                await self.redis.initialize()
            except REDIS_ERRORS as exc:
                self.health.failed("connect", exc)
            return
        import redis.asyncio as aioredis

        # A blocking pool: a burst waits for a free connection instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(c.redis_url, max_connections=c.redis_max_connections,
                                                        timeout=c.redis_timeout_s, socket_timeout=c.redis_timeout_s,
                                                        socket_connect_timeout=c.redis_timeout_s,
                                                        decode_responses=True)
        self.redis = aioredis.Redis(connection_pool=pool)

    async def script(self, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Runs a Lua script by its SHA (loading it where Redis lacks it: a restart, a new cluster node).
        On Redis Cluster every key in ``keys`` must share one hash tag, and the script may touch no other."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self.redis.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.redis.eval(source, len(keys), *keys, *args)

    async def close(self) -> None:
        if self.redis is not None:
            client, self.redis = self.redis, None
            if not self.config.redis_cluster:
                # The pool was handed to the client, so aclose() alone would leave its connections open.
                await client.aclose(close_connection_pool=True)
            else:
                await client.aclose()

    async def __aenter__(self) -> StoreLayer:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
