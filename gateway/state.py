"""What one gateway process holds for its lifetime, built once from the config."""

from __future__ import annotations

from dataclasses import dataclass, field

from backends import Backend, SessionPool, build_backend
from policies.admission import Admission
from policies.cache import ResponseCache
from policies.resilience import Resilience
from policies.router import Route, Router

from . import metrics
from .auth import Authenticator
from .config import LoadedConfig
from .pipeline import Pipeline


@dataclass(slots=True)
class Gateway:
    loaded: LoadedConfig
    auth: Authenticator
    router: Router
    pool: SessionPool
    backends: list[Backend]
    pipeline: Pipeline
    ready: bool = False
    draining: bool = False
    model_ids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, loaded: LoadedConfig) -> Gateway:
        config = loaded.config
        pool = SessionPool(limit_per_origin=config.server.upstream_max_connections)
        routes: dict[str, list[Route]] = {}
        disabled: dict[str, list[str]] = {}
        backends: list[Backend] = []
        for alias in config.models:
            routes[alias.name] = []
            for index, deployment in enumerate(alias.deployments):
                reason = loaded.deployment_disabled_reason(alias.name, index)
                metrics.DEPLOYMENT_ENABLED.labels(alias.name, deployment.id).set(0 if reason else 1)
                if reason:
                    disabled.setdefault(alias.name, []).append(f"{deployment.id}: {reason}")
                    continue
                backend = build_backend(deployment, pool)
                backends.append(backend)
                routes[alias.name].append(Route(backend, deployment.weight))
        router = Router(routes, disabled)
        stores = getattr(config, "stores", None)  # issue 3's `stores:` section: the cache shares its Redis
        cache = ResponseCache(config.cache, tenants={t.name: t.cache for t in config.tenants},
                              aliases={m.name: m.cache for m in config.models},
                              redis_url=getattr(stores, "redis_url", None))
        pipeline = Pipeline(Admission(), cache, Resilience(router))
        return cls(loaded=loaded, auth=Authenticator(config.tenants), router=router, pool=pool,
                   backends=backends, pipeline=pipeline)

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()
        await self.pipeline.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.pipeline.close()
        for backend in self.backends:
            await backend.close()
        await self.pool.close()
