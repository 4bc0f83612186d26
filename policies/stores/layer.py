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

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from ..clock import SYSTEM, Clock
from ..config import StoresConfig
from .health import REDIS_ERRORS, StoreHealth
from .keyvalue import FailoverKeyValue, KeyValue, MemoryKeyValue, RedisKeyValue

# The fields that decide the client and the failure policy: a reload that changes one needs a restart.
# A pooled connection whose server restarted fails its next command with "Connection closed by server":
# such a command is sent once more on a fresh connection (a server that is really down refuses that one at
# once). Timeouts are not retried: they would double the wait on an unreachable Redis. Connections idle for
# longer than _HEALTH_CHECK_S are checked with a PING before use.
_HEALTH_CHECK_S = 10


def _retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


CONNECTION_FIELDS = (
    "redis_url",
    "redis_cluster",
    "redis_timeout_s",
    "redis_max_connections",
    "on_redis_error",
    "retry_redis_after_s",
)


class StoreLayer:
    def __init__(self, config: StoresConfig | None = None, clock: Clock = SYSTEM) -> None:
        """``clock``: what the failure policy's retry window and the memory key/value's TTLs are timed by."""
        self.config = config or StoresConfig()
        self.health = StoreHealth(
            self.config.on_redis_error,
            self.config.retry_redis_after_s,
            clock=clock.monotonic,
            probe=self._ping,
            probe_timeout_s=self.config.redis_timeout_s,
        )
        self.redis: Any = None
        self._shas: dict[str, str] = {}
        self.kv: KeyValue = (
            MemoryKeyValue(clock.monotonic)
            if not self.shared
            else FailoverKeyValue(
                RedisKeyValue(lambda: self.redis), MemoryKeyValue(clock.monotonic), self.health
            )
        )

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

            self.redis = RedisCluster.from_url(
                c.redis_url,
                decode_responses=True,
                socket_timeout=c.redis_timeout_s,
                socket_connect_timeout=c.redis_timeout_s,
                max_connections=c.redis_max_connections,
            )
            try:
                await self.redis.initialize()
            except REDIS_ERRORS as exc:
                self.health.failed("connect", exc)
            return
        import redis.asyncio as aioredis

        # A blocking pool: a burst waits for a free connection instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            c.redis_url,
            max_connections=c.redis_max_connections,
            timeout=c.redis_timeout_s,
            socket_timeout=c.redis_timeout_s,
            socket_connect_timeout=c.redis_timeout_s,
            decode_responses=True,
            retry=_retry(),
            health_check_interval=_HEALTH_CHECK_S,
        )
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

    async def _ping(self) -> Any:
        if self.redis is None:
            raise RedisConnectionError("the store layer is closed")
        return await self.redis.ping()

    async def close(self) -> None:
        await self.health.close()
        if self.redis is not None:
            client, self.redis = self.redis, None
            await client.aclose()
            pool = getattr(client, "connection_pool", None)
            if pool is not None:  # a pool handed to the client is not closed by it
                await pool.disconnect()

    async def __aenter__(self) -> StoreLayer:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
