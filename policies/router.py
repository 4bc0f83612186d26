"""Model alias -> the deployment that takes a request, by the alias's strategy.

Strategies (``models[].routing.strategy``): ``weighted`` random, ``least_outstanding`` requests,
``lowest_latency`` (EWMA of time to first token), ``lowest_cost`` (catalog price), ``sticky`` (a session
goes to the same deployment, by rendezvous hashing of its key, so a local engine's prefix cache holds it;
when that deployment is skipped only its sessions move). Outstanding counts and latencies are this
process's own observations.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from backends import Backend, DeploymentConfig
from errors import Unavailable

from .concurrency import InFlightCap
from .models import model_info
from .resilience_config import RoutingConfig


@dataclass(slots=True, eq=False)
class Route:
    """One deployment of one alias, with what routing learns about it."""

    alias: str
    backend: Backend
    deployment: DeploymentConfig
    key: str = ""  # alias/deployment: the breaker's name
    weight: float = 1.0
    cost: float | None = None  # USD per million prompt + completion tokens
    context_window: int | None = None
    outstanding: int = 0
    latency_s: float | None = None  # EWMA of time to first token
    cap: InFlightCap | None = None  # the deployment's max_concurrency, taken per attempt
    _seed: bytes = field(default=b"", repr=False)

    @classmethod
    def of(
        cls, alias: str, deployment: DeploymentConfig, backend: Backend, cap: InFlightCap | None = None
    ) -> Route:
        info = model_info(deployment.model)
        window = deployment.context_window or (info.context_window if info is not None else None)
        return cls(
            alias=alias,
            backend=backend,
            deployment=deployment,
            key=f"{alias}/{deployment.id}",
            weight=deployment.weight,
            cost=(info.input + info.output) if info is not None else None,
            context_window=window,
            cap=cap,
            _seed=deployment.id.encode(),
        )

    @property
    def id(self) -> str:
        return self.backend.id

    def observe_latency(self, seconds: float, alpha: float) -> None:
        self.latency_s = seconds if self.latency_s is None else alpha * seconds + (1 - alpha) * self.latency_s


class Router:
    def __init__(
        self,
        routes: Mapping[str, Sequence[Route]],
        disabled: Mapping[str, list[str]],
        routing: Mapping[str, RoutingConfig] | None = None,
    ) -> None:
        self._routes = {alias: tuple(r) for alias, r in routes.items()}
        self._disabled = disabled
        self.routing = {alias: (routing or {}).get(alias) or RoutingConfig() for alias in self._routes}

    def __contains__(self, alias: str) -> bool:
        return alias in self._routes

    def adapter_alias(self, model: str) -> str | None:
        """``ALIAS`` of a ``model`` written ``ALIAS:ADAPTER`` (a LoRA adapter, docs/lora.md) when every
        deployment of that alias is a local engine the gateway runs (in process or managed workers; one
        behind an ``api_base`` gets the deployment's ``model``); None otherwise."""
        alias, colon, adapter = model.partition(":")
        routes = self._routes.get(alias)
        if not colon or not adapter or not routes or not all(r.deployment.in_process for r in routes):
            return None
        return alias

    def usable(self, alias: str) -> bool:
        return bool(self._routes.get(alias))

    def routes(self, alias: str) -> tuple[Route, ...]:
        """The alias's enabled deployments; 503 when it has none."""
        routes = self._routes[alias]
        if not routes:
            reasons = "; ".join(self._disabled.get(alias, [])) or "none configured"
            raise Unavailable(f"The model `{alias}` has no enabled deployment ({reasons}).")
        return routes

    def all_routes(self) -> list[Route]:
        return [route for routes in self._routes.values() for route in routes]

    def pick(self, alias: str, candidates: Sequence[Route], session: str | None = None) -> Route:
        """The preferred one of ``candidates`` (a non-empty subset of the alias's routes)."""
        if len(candidates) == 1:
            return candidates[0]
        strategy = self.routing[alias].strategy
        if strategy == "least_outstanding":
            least = min(r.outstanding for r in candidates)
            return _weighted([r for r in candidates if r.outstanding == least])
        if strategy == "lowest_latency":
            # Unmeasured deployments first, so that each gets measured.
            unmeasured = [r for r in candidates if r.latency_s is None]
            if unmeasured:
                return _weighted(unmeasured)
            return min(candidates, key=lambda r: r.latency_s or 0.0)
        if strategy == "lowest_cost":
            cheapest = min(r.cost if r.cost is not None else math.inf for r in candidates)
            return _weighted(
                [r for r in candidates if (r.cost if r.cost is not None else math.inf) == cheapest]
            )
        if strategy == "sticky" and session:
            return max(candidates, key=lambda r: _rendezvous(session, r))
        return _weighted(candidates)


def _weighted(routes: Sequence[Route]) -> Route:
    if len(routes) == 1:
        return routes[0]
    return random.choices(routes, weights=[r.weight for r in routes])[0]


def _rendezvous(session: str, route: Route) -> float:
    # Weighted rendezvous hashing with a hash that is the same in every process (unlike hash()).
    digest = hashlib.blake2b(session.encode() + b"\0" + route._seed, digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2**64
    return -route.weight / math.log(u)
