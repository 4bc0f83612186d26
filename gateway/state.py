"""What one gateway process holds for its lifetime, built once from the config."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, fields

from backends import Backend, SessionPool, build_backend
from policies.admission import Admission, AliasPolicy
from policies.cache import ResponseCache
from policies.clock import SYSTEM, Clock
from policies.concurrency import InFlightCap
from policies.context import ContextPolicies
from policies.cost import PriceTable, dearest, deployment_price
from policies.resilience import Resilience
from policies.router import Route, Router
from policies.shadow import Shadows
from policies.stores.base import Store
from policies.stores.layer import CONNECTION_FIELDS, StoreLayer
from policies.tokens import encoding_of
from policies.variant_history import VariantHistory
from policies.variants import Variants

from . import metrics
from .auth import Authenticator
from .config import GatewayConfig, LoadedConfig
from .logs import get_logger
from .pipeline import Pipeline
from .security import crypto, secrets

_CLOSE_TIMEOUT_S = 10.0


@dataclass(slots=True)
class Gateway:
    loaded: LoadedConfig
    auth: Authenticator
    router: Router
    pool: SessionPool
    backends: list[Backend]
    pipeline: Pipeline
    stores: StoreLayer  # the process's (the app's): opened and closed by the app, not by a gateway
    ready: bool = False
    draining: bool = False
    model_ids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, loaded: LoadedConfig, stores: StoreLayer, clock: Clock = SYSTEM) -> Gateway:
        """``stores``: the app's store layer; a config whose ``stores:`` asks for another connection (a reload)
        keeps it, with a warning: that change needs a restart."""
        config = loaded.config
        secrets.register(config)
        if not stores.serves(config.stores):
            changed = [f for f in CONNECTION_FIELDS if getattr(stores.config, f) != getattr(config.stores, f)]
            get_logger().warning(
                "stores connection settings changed; they apply after a restart", fields=changed
            )
        pool = SessionPool(limit_per_origin=config.server.upstream_max_connections)
        routes: dict[str, list[Route]] = {}
        disabled: dict[str, list[str]] = {}
        backends: list[Backend] = []
        admission = _admission(config, stores, clock)
        for alias in config.models:
            routes[alias.name] = []
            for index, deployment in enumerate(alias.deployments):
                reason = loaded.deployment_disabled_reason(alias.name, index)
                metrics.DEPLOYMENT_ENABLED.labels(alias.name, deployment.id).set(0 if reason else 1)
                if reason:
                    disabled.setdefault(alias.name, []).append(f"{deployment.id}: {reason}")
                    continue
                backend = build_backend(deployment, pool, clock)
                cap = None
                if deployment.max_concurrency is not None:
                    cap = InFlightCap(
                        backend.id,
                        deployment.max_concurrency,
                        admission.store,
                        wait_s=deployment.timeouts.connect_s,
                        lease_s=config.stores.settle_after_s,
                    )
                backends.append(backend)
                routes[alias.name].append(Route.of(alias.name, deployment, backend, cap))
        router = Router(routes, disabled, {alias.name: alias.routing for alias in config.models})
        resilience = Resilience(
            router,
            config.resilience,
            retry={a.name: a.retry for a in config.models},
            fallbacks={a.name: a.fallbacks for a in config.models},
            stores=stores,
            events=metrics.ResilienceMetrics(),
            clock=clock,
        )
        for route in router.all_routes():
            metrics.BREAKER_STATE.labels(route.key).set(0)
        cache = ResponseCache(
            config.cache,
            tenants={t.name: t.cache for t in config.tenants},
            aliases={m.name: m.cache for m in config.models},
            stores=stores,
            clock=clock.time,
        )
        cache.prices = {
            d.id: deployment_price(d.model, d.price) for m in config.models for d in m.deployments
        }
        if config.encryption is not None:
            cache.answers = crypto.EncryptedAnswers(cache.answers, crypto.keyring(config.encryption))
        context = ContextPolicies(
            router, {m.name: m.context for m in config.models}, {t.name: t.context for t in config.tenants}
        )
        configured = {m.name: m.variants for m in config.models}
        versions = VariantHistory(
            Variants(configured, {t.name: t.variants for t in config.tenants}),
            stores.kv,
            configured,
            {m.name: [d.id for d in m.deployments] for m in config.models},
            clock,
            poll_s=config.control_plane.poll_interval_s,
        )
        resilience.observe = versions.canary.observe
        shadows = Shadows(versions.variants, context, admission, resilience, embed=lambda: cache.embedder)
        pipeline = Pipeline(admission, cache, resilience, context, versions, shadows)
        return cls(
            loaded=loaded,
            auth=Authenticator(config.tenants),
            router=router,
            pool=pool,
            backends=backends,
            pipeline=pipeline,
            stores=stores,
        )

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()
        await self.pipeline.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        try:
            # Settlements still queued are written here; a store that stops answering must not hold the
            # process past its drain (the sweeper settles what is left at its estimate).
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.pipeline.close()
        except TimeoutError:
            get_logger().warning(
                "closing the pipeline timed out; unsettled requests are left to the sweeper",
                timeout_s=_CLOSE_TIMEOUT_S,
            )
        for backend in self.backends:
            await backend.close()
        await self.pool.close()

    @property
    def ledger(self) -> Store:
        """Where the ledger's records and aggregates are read (the admin API's usage report)."""
        return self.pipeline.admission.store

    def adopt(self, other: Gateway) -> Gateway:
        """Take over every field of ``other`` (a started gateway built from a reloaded config) in place, so
        that ``app[GATEWAY]`` and anything holding this object see the new config at once. Returns a detached
        gateway holding the previous fields, for the caller to ``close()`` once requests using them are done.
        ``draining`` stays as it was: it is this process's state, not the config's."""
        old = object.__new__(type(self))
        for f in fields(self):
            object.__setattr__(old, f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, getattr(other, f.name))
        self.draining = old.draining
        return old


def _admission(config: GatewayConfig, stores: StoreLayer, clock: Clock) -> Admission:
    prices: dict[str, PriceTable] = {}
    aliases: dict[str, AliasPolicy] = {}
    for alias in config.models:
        alias_prices = []
        for deployment in alias.deployments:
            price = prices[deployment.id] = deployment_price(deployment.model, deployment.price)
            alias_prices.append(price)
            if not price.known:
                get_logger().warning(
                    "no price for deployment: its usage is recorded at $0 (set its price)",
                    alias=alias.name,
                    deployment=deployment.id,
                )
        aliases[alias.name] = AliasPolicy(
            max_price=dearest(alias_prices), count_streams=any(not d.stream_usage for d in alias.deployments)
        )
    admission = Admission(
        tenants={t.name: t for t in config.tenants},
        defaults=config.policies,
        stores=config.stores,
        aliases=aliases,
        prices=prices,
        layer=stores,
        clock=clock,
    )
    if admission.counts_tokens or any(a.count_streams for a in aliases.values()):
        # The tokenizers (bpe-openai) cost ~60 MB of memory: loaded only where a limit, a budget or a stream
        # without usage needs real counts; elsewhere prompts are estimated at four characters a token.
        admission.use_encodings(
            {alias.name: encoding_of(d.model for d in alias.deployments) for alias in config.models}
        )
    return admission
