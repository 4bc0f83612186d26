"""Configuration of routing, retries, fallbacks, circuit breakers and deadlines (docs/resilience.md).

Per alias: ``models[].routing``, ``models[].fallbacks``, ``models[].retry``; gateway-wide defaults in the
top-level ``resilience`` section. ``gateway/config.py`` composes them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["weighted", "least_outstanding", "lowest_latency", "lowest_cost", "sticky"]
# What makes a fallback take over; docs/resilience.md says which upstream answers fall in which class.
ErrorClass = Literal["any", "rate_limited", "timeout", "context_window", "content_policy"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RoutingConfig(_Frozen):
    strategy: Strategy = "weighted"
    session_header: str = Field(
        default="x-session-id",
        min_length=1,
        description="sticky: the request header naming the session (else the body's user)",
    )
    latency_alpha: float = Field(
        default=0.3, gt=0, le=1, description="lowest_latency: weight of the newest sample"
    )


class RetryConfig(_Frozen):
    attempts: int = Field(default=3, ge=1, le=10, description="attempts per alias, the first one included")
    on_status: tuple[int, ...] = (408, 409, 429, 500, 502, 503, 504)
    backoff_base_s: float = Field(default=0.05, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    retry_after_max_s: float = Field(
        default=10.0, ge=0, description="Retry-After up to this is waited for; longer: no retry there"
    )
    budget_ratio: float = Field(default=0.2, ge=0, le=10, description="retries per request over the window")
    budget_min_per_s: float = Field(default=1.0, ge=0, description="retries always allowed, per second")
    budget_window_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _statuses(self) -> RetryConfig:
        bad = [s for s in self.on_status if not 400 <= s <= 599]
        if bad:
            raise ValueError(f"on_status: {bad} are not HTTP error statuses (400-599)")
        return self


class BreakerConfig(_Frozen):
    enabled: bool = True
    # Under concurrency errors come back first (they are fast), so a small N trips on an upstream that
    # is only flaky; the ratio is the criterion at load, N the one for little traffic.
    failures: int = Field(default=25, ge=1, description="consecutive failures that open the breaker")
    failure_ratio: float = Field(
        default=0.5, gt=0, le=1, description="or this share of failures over window_s"
    )
    min_requests: int = Field(default=20, ge=1, description="requests in the window before the ratio counts")
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(
        default=30.0, gt=0, description="open -> half-open: one trial request goes through"
    )
    # The client's own mistakes. Not 401/403: an upstream refusing the gateway's key is a 502
    # (upstream_auth_failed), a fault of the deployment that should take it out of rotation.
    ignore_status: tuple[int, ...] = (400, 404, 413, 422)
    sync_s: float = Field(
        default=0.5, gt=0, description="Redis: how often a process refreshes the shared state"
    )


class FallbackConfig(_Frozen):
    alias: str = Field(min_length=1)
    on: tuple[ErrorClass, ...] = Field(default=("any",), min_length=1)


class ResilienceConfig(_Frozen):
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    deadline_s: float = Field(
        default=600.0, gt=0, description="a request's total deadline, all attempts included"
    )
    max_deadline_s: float = Field(default=600.0, gt=0, description="cap on the deadline a client may ask for")
    deadline_header: str = Field(default="x-gateway-timeout", min_length=1)
    context_check: bool = Field(
        default=True,
        description="skip deployments whose context window the prompt "
        "would overflow, by estimate, before calling",
    )


def check_models(
    aliases: list[str], deployment_ids: list[list[str]], chains: list[tuple[FallbackConfig, ...]]
) -> list[str]:
    """``path: message`` problems: a deployment id twice in one alias (breakers, metrics and
    ``x-gateway-deployment`` tell deployments apart by id), fallbacks naming no alias or the alias itself."""
    problems: list[str] = []
    for i, ids in enumerate(deployment_ids):
        for j, deployment_id in enumerate(ids):
            if deployment_id in ids[:j]:
                problems.append(
                    f"models[{i}].deployments[{j}].name: deployment id {deployment_id!r} is used twice "
                    "in this alias (give each deployment a distinct name)"
                )
    for i, chain in enumerate(chains):
        for j, fallback in enumerate(chain):
            if fallback.alias not in aliases:
                problems.append(f"models[{i}].fallbacks[{j}].alias: no model alias named {fallback.alias!r}")
            elif fallback.alias == aliases[i]:
                problems.append(f"models[{i}].fallbacks[{j}].alias: an alias cannot fall back to itself")
    return problems
