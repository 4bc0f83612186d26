"""Named variants of a model alias: which one serves a request, and what it changes in the request.

A variant (``models[].variants.NAME``) is a set of the alias's deployments with its own system prompt and
parameter defaults. Which variant serves a request, first match wins:

    1. the ``x-gateway-variant`` request header (400 for a name the alias does not have)
    2. the tenant's pin (``tenants[].variants: {alias: name}``)
    3. by weight: with an end user (the body's ``user``, else the ``x-gateway-session`` header) the same user
       always gets the same variant while the weights stay (weighted rendezvous hashing, the same in every
       process); without one, at random in proportion to the weights

The variant's ``system_prompt`` goes first, before the client's own messages; its ``params`` fill fields the
client left unset. Only its deployments are routed to (by the alias's strategy); fallback aliases are not
restricted. The answer carries ``x-gateway-variant``, and the log line ``variant``. Its ``price`` replaces the
deployment's in the ledger; its ``shadow`` draws the requests to mirror (shadow.py); a ``canary`` is watched
against its stable variant (canary.py).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backends import Endpoint
from backends.config import Price
from errors import InvalidRequest

from .call import Call
from .cost import PriceTable, deployment_price

HEADER = "x-gateway-variant"
SESSION_HEADER = "x-gateway-session"
SHADOW_KEY = "shadow"  # the key id of shadow requests (policies/shadow.py); their variant is ``shadow:NAME``


class CanaryConfig(BaseModel):
    """A candidate variant watched against a stable one; rolled back (weight 0) when it does worse."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stable: str = Field(description="the variant it is compared with")
    window_s: float = Field(default=300.0, gt=0, description="outcomes older than this are forgotten")
    min_requests: int = Field(
        default=20, ge=1, description="outcomes of each variant in the window before judging"
    )
    error_rate_margin: float = Field(
        default=0.05,
        ge=0,
        description="rolled back when its error rate is above "
        "the stable's plus this (absolute: 0.05 = 5 points)",
    )
    latency_margin: float = Field(
        default=0.5, ge=0, description="rolled back when its p95 latency is above the stable's times 1 + this"
    )
    latency_floor_s: float = Field(
        default=0.05,
        ge=0,
        description="and only when the two p95s differ by more "
        "than this (jitter of fast answers is no regression)",
    )


class ShadowConfig(BaseModel):
    """A share of the requests this variant serves, mirrored to another variant whose answers are discarded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: str
    share: float = Field(gt=0, le=1)


class VariantConfig(BaseModel):
    """One named variant of an alias."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployments: tuple[str, ...] = Field(
        min_length=1,
        description="ids (name, or provider/model) of the alias's deployments that serve this variant",
    )
    weight: float = Field(
        default=1.0, ge=0, description="share of the alias's unpinned traffic; 0: pinned only"
    )
    system_prompt: str | None = None
    params: dict[str, Any] = Field(
        default_factory=dict, description="request fields set when the client sets none (temperature, …)"
    )
    price: Price | None = Field(default=None, description="replaces the deployment's price in the ledger")
    canary: CanaryConfig | None = None
    shadow: ShadowConfig | None = None


def check_variants(
    alias: str, deployments: Sequence[str], variants: Mapping[str, VariantConfig]
) -> list[str]:
    """Config problems of one alias's variants, as ``path: message`` lines."""
    problems = []
    for name, variant in variants.items():
        for i, deployment in enumerate(variant.deployments):
            if deployment not in deployments:
                problems.append(
                    f"models.{alias}.variants.{name}.deployments[{i}]: the alias has no deployment "
                    f"{deployment!r} (it has: {', '.join(deployments)})"
                )
        for field, other in (
            ("canary.stable", variant.canary and variant.canary.stable),
            ("shadow.variant", variant.shadow and variant.shadow.variant),
        ):
            if other and (other not in variants or other == name):
                problems.append(
                    f"models.{alias}.variants.{name}.{field}: {other!r} is not another variant of the alias"
                )
    if variants and not any(v.weight > 0 for v in variants.values()):
        problems.append(f"models.{alias}.variants: at least one variant needs a weight above 0")
    return problems


class Selector:
    """Picks a variant by weight; sticky per end user. ``rng``: seeded in tests."""

    def __init__(self, weights: Mapping[str, float], rng: random.Random | None = None) -> None:
        self.names = tuple(n for n, w in weights.items() if w > 0)
        self.weights = tuple(weights[n] for n in self.names)
        self._seeds = tuple(n.encode() for n in self.names)
        self._rng = rng or random.Random()

    def pick(self, user: str | None = None) -> str:
        if len(self.names) == 1:
            return self.names[0]
        if user is None:
            return self._rng.choices(self.names, weights=self.weights)[0]
        key = user.encode() + b"\0"
        best, best_score = self.names[0], -math.inf
        for name, seed, weight in zip(self.names, self._seeds, self.weights, strict=True):
            digest = hashlib.blake2b(key + seed, digest_size=8).digest()
            u = (int.from_bytes(digest, "big") + 0.5) / 2**64
            score = -weight / math.log(u)
            if score > best_score:
                best, best_score = name, score
        return best


class Variants:
    """Every alias's variants and every tenant's pins; ``choose`` applies one to a call."""

    def __init__(
        self,
        aliases: Mapping[str, Mapping[str, VariantConfig]],
        pins: Mapping[str, Mapping[str, str]],
        rng: random.Random | None = None,
    ) -> None:
        self._pins = pins
        self._rng = rng
        self._aliases: dict[str, dict[str, VariantConfig]] = {}
        self._selectors: dict[str, Selector] = {}
        self._prices: dict[tuple[str, str], PriceTable] = {}
        self._draw = (rng or random.Random()).random
        for alias, variants in aliases.items():
            if variants:
                self.replace(alias, dict(variants))

    def configs(self, alias: str) -> dict[str, VariantConfig]:
        return dict(self._aliases.get(alias, {}))

    def replace(self, alias: str, variants: dict[str, VariantConfig]) -> None:
        """The alias's variants from now on (version control: policies/variant_history.py)."""
        self._selectors[alias] = Selector({n: v.weight for n, v in variants.items()}, self._rng)
        self._aliases[alias] = variants
        for name, variant in variants.items():
            if variant.price is not None:
                self._prices[(alias, name)] = deployment_price("", variant.price)
            else:
                self._prices.pop((alias, name), None)

    def choose(self, call: Call) -> None:
        """Sets ``call.variant`` and ``call.deployments`` and applies the variant's prompt and parameters."""
        variants = self._aliases.get(call.alias)
        if variants is None:
            if call.headers.get(HEADER):
                raise InvalidRequest(f"The model `{call.alias}` has no variants.", param=HEADER)
            return
        asked = call.headers.get(HEADER) or self._pins.get(call.tenant, {}).get(call.alias)
        if asked is not None:
            if asked not in variants:
                raise InvalidRequest(
                    f"The model `{call.alias}` has no variant {asked!r} (it has: {', '.join(variants)}).",
                    param=HEADER,
                )
            name = asked
        else:
            user = call.body.get("user")
            session = user if isinstance(user, str) and user else call.headers.get(SESSION_HEADER)
            name = self._selectors[call.alias].pick(session)
        variant = variants[name]
        shadowing = call.key_id == SHADOW_KEY
        call.variant = call.record.variant = f"{SHADOW_KEY}:{name}" if shadowing else name
        call.deployments = frozenset(variant.deployments)
        call.record.response_headers[HEADER] = name
        call.price = self._prices.get((call.alias, name))
        shadow = variant.shadow
        if shadow is not None and not shadowing and not call.batch and self._draw() < shadow.share:
            call.shadow = (
                shadow.variant,
                dict(call.body),
            )  # the client's body, before this variant's changes
        for field, value in variant.params.items():
            call.body.setdefault(field, value)
        if (
            variant.system_prompt is not None
            and call.endpoint is Endpoint.CHAT
            and isinstance(call.body.get("messages"), list)
        ):
            call.body["messages"] = [
                {"role": "system", "content": variant.system_prompt},
                *call.body["messages"],
            ]
