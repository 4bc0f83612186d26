"""The ``cache:`` section of config.yaml, and the per-tenant / per-alias overrides (``tenants[i].cache``,
``models[i].cache``). An alias's override applies over the defaults, a tenant's over both."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Reuse = Literal["deterministic", "always"]


class SemanticConfig(_Frozen):
    enabled: bool = False
    # None: the operating point the verifier was trained for (bench/train_verifier.py)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    verify: bool = True
    min_probability: float | None = Field(default=None, ge=0.0, le=1.0)
    index: Literal["edge", "qdrant"] = "edge"
    url: str | None = None           # index: qdrant -> a Qdrant server, or ":memory:" for qdrant-client's local mode
    api_key: str | None = None
    path: str | None = None          # index: edge -> where the shard lives (a temporary folder when unset)
    collection_prefix: str = Field(default="gateway_cache", min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    candidates: int = Field(default=3, ge=1, le=50)
    timeout_s: float = Field(default=1.0, gt=0)   # a semantic lookup slower than this is a miss
    # the model reads 256 tokens at most: longer questions that differ only past them would look identical
    max_question_chars: int = Field(default=800, ge=1)

    @model_validator(mode="after")
    def _url_for_qdrant(self) -> SemanticConfig:
        if self.index == "qdrant" and not self.url:
            raise ValueError("url: required when index is 'qdrant' (a server URL, or ':memory:')")
        return self


class CacheConfig(_Frozen):
    enabled: bool = False
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    # Entries alone do not bound memory (one embeddings answer of 512 inputs is ~10 MB): bytes do.
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, description="answers' bytes at most: in memory "
                           "per process, in Redis per tenant")
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, ge=1, description="a larger answer is not cached")
    # deterministic: only temperature 0 requests; always: any temperature (the tenant accepts reused answers)
    reuse: Reuse = "deterministic"
    semantic: SemanticConfig = SemanticConfig()


class CacheOverride(_Frozen):
    """``cache:`` under a tenant or a model alias; unset fields keep the more general setting."""

    enabled: bool | None = None
    ttl_s: float | None = Field(default=None, gt=0)
    reuse: Reuse | None = None
    semantic: bool | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


@dataclass(frozen=True, slots=True)
class Settings:
    """What applies to one tenant and alias."""

    enabled: bool
    ttl_s: float
    reuse: Reuse
    semantic: bool
    threshold: float | None


def resolve(defaults: CacheConfig, *overrides: CacheOverride | None) -> Settings:
    settings = Settings(enabled=defaults.enabled, ttl_s=defaults.ttl_s, reuse=defaults.reuse,
                        semantic=defaults.semantic.enabled, threshold=defaults.semantic.threshold)
    for override in overrides:
        if override is None:
            continue
        settings = Settings(
            enabled=settings.enabled if override.enabled is None else override.enabled,
            ttl_s=settings.ttl_s if override.ttl_s is None else override.ttl_s,
            reuse=settings.reuse if override.reuse is None else override.reuse,
            semantic=settings.semantic if override.semantic is None else override.semantic,
            threshold=settings.threshold if override.threshold is None else override.threshold,
        )
    return settings


def combinations(defaults: CacheConfig, tenants: Iterable[CacheOverride | None],
                 aliases: Iterable[CacheOverride | None]) -> list[Settings]:
    """What applies to each tenant and alias pair: what some pair may use decides what is built."""
    tenant_overrides = list(tenants) or [None]
    alias_overrides = list(aliases) or [None]
    return [resolve(defaults, a, t) for t in tenant_overrides for a in alias_overrides]
