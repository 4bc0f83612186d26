"""Model alias -> the deployment that takes a request."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backends import Backend
from backends.errors import Unavailable


@dataclass(frozen=True, slots=True)
class Route:
    backend: Backend
    weight: float


class Router:
    """Weighted random choice among an alias's enabled deployments."""

    def __init__(self, routes: Mapping[str, Sequence[Route]], disabled: Mapping[str, list[str]]) -> None:
        self._routes = {alias: tuple(r) for alias, r in routes.items()}
        self._weights = {alias: [r.weight for r in rs] for alias, rs in self._routes.items()}
        self._disabled = disabled

    def __contains__(self, alias: str) -> bool:
        return alias in self._routes

    def usable(self, alias: str) -> bool:
        return bool(self._routes.get(alias))

    def pick(self, alias: str) -> Backend:
        routes = self._routes[alias]
        if not routes:
            reasons = "; ".join(self._disabled.get(alias, [])) or "none configured"
            raise Unavailable(f"The model `{alias}` has no enabled deployment ({reasons}).")
        if len(routes) == 1:
            return routes[0].backend
        return random.choices(routes, weights=self._weights[alias])[0].backend
