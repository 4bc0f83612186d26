"""The ``cache:`` section of config.yaml, and the per-tenant / per-alias overrides (``tenants[i].cache``,
``models[i].cache``). An alias's override applies over the defaults, a tenant's over both."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Reuse = Literal["deterministic", "always"]
# off: exact cache only; faq: the high-precision operating point (FAQ-like traffic, where a wrong answer costs
# more than a miss); general: the operating point for general chat and code (docs/cache.md has both's figures)
Mode = Literal["off", "faq", "general"]


def _yaml_off(value: Any) -> Any:
    return "off" if value is False else value  # YAML reads an unquoted off as false


ModeField = Annotated[Mode, BeforeValidator(_yaml_off)]


class SemanticConfig(_Frozen):
    enabled: bool = False
    mode: ModeField = "faq"  # with enabled: the default of every tenant and alias (general: opt in)
    # prompts that hold code or are mostly symbols: "exact" (exact cache only) or "semantic" (looked up like
    # any question; the verifier's symbol check still vetoes any differing operator)
    code: Literal["exact", "semantic"] = "exact"
    # None: the operating point the verifier was trained for (bench/train_verifier.py)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    verify: bool = True
    min_probability: float | None = Field(default=None, ge=0.0, le=1.0)
    index: Literal["edge", "qdrant"] = "edge"
    url: str | None = None  # index: qdrant -> a Qdrant server, or ":memory:" for qdrant-client's local mode
    api_key: str | None = None
    path: str | None = None  # index: edge -> where the shard lives (a temporary folder when unset)
    collection_prefix: str = Field(default="gateway_cache", min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    candidates: int = Field(default=3, ge=1, le=50)
    timeout_s: float = Field(default=1.0, gt=0)  # a semantic lookup slower than this is a miss
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
    max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="answers' bytes at most: in memory per process, in Redis per tenant",
    )
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, ge=1, description="a larger answer is not cached")
    # deterministic: only temperature 0 requests; always: any temperature (the tenant accepts reused answers)
    reuse: Reuse = "deterministic"
    semantic: SemanticConfig = SemanticConfig()


class SemanticOverride(_Frozen):
    """``semantic: {mode: faq}`` under a tenant's or an alias's ``cache:``."""

    mode: ModeField | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class CacheOverride(_Frozen):
    """``cache:`` under a tenant or a model alias; unset fields keep the more general setting."""

    enabled: bool | None = None
    ttl_s: float | None = Field(default=None, gt=0)
    reuse: Reuse | None = None
    # false: off; true: on, in the defaults' mode (general when the defaults have it off); or {mode, threshold}
    semantic: bool | SemanticOverride | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


@dataclass(frozen=True, slots=True)
class Settings:
    """What applies to one tenant and alias."""

    enabled: bool
    ttl_s: float
    reuse: Reuse
    mode: Mode
    threshold: float | None

    @property
    def semantic(self) -> bool:
        return self.mode != "off"


def _mode(current: Mode, defaults: SemanticConfig, override: bool | SemanticOverride | None) -> Mode:
    if override is None:
        return current
    if isinstance(override, bool):
        if not override:
            return "off"
        return current if current != "off" else (defaults.mode if defaults.mode != "off" else "faq")
    return current if override.mode is None else override.mode


def resolve(defaults: CacheConfig, *overrides: CacheOverride | None) -> Settings:
    semantic = defaults.semantic
    settings = Settings(
        enabled=defaults.enabled,
        ttl_s=defaults.ttl_s,
        reuse=defaults.reuse,
        mode=semantic.mode if semantic.enabled else "off",
        threshold=semantic.threshold,
    )
    for override in overrides:
        if override is None:
            continue
        threshold = override.threshold
        if isinstance(override.semantic, SemanticOverride) and override.semantic.threshold is not None:
            threshold = override.semantic.threshold
        settings = Settings(
            enabled=settings.enabled if override.enabled is None else override.enabled,
            ttl_s=settings.ttl_s if override.ttl_s is None else override.ttl_s,
            reuse=settings.reuse if override.reuse is None else override.reuse,
            mode=_mode(settings.mode, semantic, override.semantic),
            threshold=settings.threshold if threshold is None else threshold,
        )
    return settings


def combinations(
    defaults: CacheConfig, tenants: Iterable[CacheOverride | None], aliases: Iterable[CacheOverride | None]
) -> list[Settings]:
    """What applies to each tenant and alias pair: what some pair may use decides what is built."""
    tenant_overrides = list(tenants) or [None]
    alias_overrides = list(aliases) or [None]
    return [resolve(defaults, a, t) for t in tenant_overrides for a in alias_overrides]
