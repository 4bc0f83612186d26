"""Config of the admission policies: limits, budgets, priority and queue per tenant, and the stores.

Composed into ``gateway/config.py`` (``stores``, ``policies`` and fields on each tenant). A tenant's field,
when set, replaces the ``policies`` default of the same name as a whole.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PRIORITIES = ("interactive", "batch")  # served in this order
Priority = Literal["interactive", "batch"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Frozen):
    """Token buckets (per minute, refilled continuously) and an in-flight cap. None: no limit."""

    rpm: int | None = Field(default=None, ge=1, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="tokens (prompt + completion) per minute")
    rpm_burst: int | None = Field(default=None, ge=1, description="request bucket capacity (default: rpm)")
    tpm_burst: int | None = Field(default=None, ge=1, description="token bucket capacity (default: tpm)")
    max_concurrency: int | None = Field(default=None, ge=1, description="requests in flight at once")

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_concurrency is None


class Budget(_Frozen):
    """USD per UTC day and per UTC month; ``soft_ratio`` of a limit logs a warning and counts a metric."""

    daily_usd: float | None = Field(default=None, gt=0)
    monthly_usd: float | None = Field(default=None, gt=0)
    soft_ratio: float = Field(default=0.8, gt=0, le=1)

    @property
    def empty(self) -> bool:
        return self.daily_usd is None and self.monthly_usd is None


class KeyPolicy(_Frozen):
    """Settings of one API key, named by its key id (the first 12 hex digits of its hash)."""

    limits: Limits | None = None
    budget: Budget | None = None
    priority: Priority | None = None


class QueueConfig(_Frozen):
    max_size: int = Field(default=1000, ge=0, description="requests waiting in one gateway process")
    max_per_tenant: int = Field(default=200, ge=0, description="of which one tenant may hold")


class PolicyDefaults(_Frozen):
    """``policies:`` in config.yaml: what a tenant gets when it does not set the field itself."""

    limits: Limits = Limits()
    key_limits: Limits = Limits()
    model_limits: dict[str, Limits] = Field(default_factory=dict)
    budget: Budget = Budget()
    key_budget: Budget = Budget()
    max_wait_s: float = Field(default=10.0, ge=0)
    priority: Priority = "interactive"
    default_max_tokens: int = Field(
        default=4096, ge=1, description="completion tokens reserved when a request sets no max_tokens"
    )
    queue: QueueConfig = QueueConfig()


class TenantPolicyFields(_Frozen):
    """The policy fields of a tenant (mixed into ``gateway.config.TenantConfig``)."""

    limits: Limits | None = None
    key_limits: Limits | None = None
    model_limits: dict[str, Limits] | None = None
    budget: Budget | None = None
    key_budget: Budget | None = None
    max_wait_s: float | None = Field(default=None, ge=0)
    priority: Priority | None = None
    weight: float = Field(
        default=1.0, gt=0, description="share of contended capacity (weighted fair queuing)"
    )
    per_key: dict[str, KeyPolicy] = Field(default_factory=dict)

    @field_validator("per_key", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        """YAML reads an unquoted key id of 12 decimal digits (452297840952) as a number: it is still that key
        id. One it read otherwise (leading zeros dropped, octal) cannot be told back: it must be quoted."""
        if not isinstance(value, dict):
            return value
        ids: dict[Any, Any] = {}
        for key_id, policy in value.items():
            if isinstance(key_id, int) and not isinstance(key_id, bool):
                if len(str(key_id)) != 12:
                    raise ValueError(f"{key_id} is not a key id: YAML read it as a number; quote key ids")
                key_id = str(key_id)
            ids[key_id] = policy
        return ids

    @field_validator("per_key")
    @classmethod
    def _key_ids(cls, value: dict[str, KeyPolicy]) -> dict[str, KeyPolicy]:
        for key_id in value:
            if len(key_id) != 12 or any(c not in "0123456789abcdef" for c in key_id):
                raise ValueError(
                    f"{key_id!r} is not a key id (the 12 hex digits after 'sha256:' in the key's hash)"
                )
        return value


class StoresConfig(_Frozen):
    """``stores:``: where limits, budgets, the ledger, breakers and the exact cache live. No ``redis_url``: in
    this process's memory."""

    redis_url: str | None = None
    redis_cluster: bool = Field(default=False, description="redis_url names one node of a Redis Cluster")
    on_redis_error: Literal["fail_open", "fail_closed"] = "fail_open"
    redis_timeout_s: float = Field(default=0.5, gt=0)
    redis_max_connections: int = Field(default=64, ge=1, description="connections per gateway process")
    retry_redis_after_s: float = Field(
        default=1.0,
        gt=0,
        description="after a timeout, leave Redis alone this long (a PING probe ends it sooner)",
    )
    settle_after_s: float = Field(
        default=900.0, gt=0, description="a reservation still open this long is settled at its estimate"
    )
    sweep_interval_s: float = Field(default=30.0, gt=0)
    retention_days: int = Field(default=400, ge=1, description="ledger records and aggregates kept in Redis")
    memory_max_records: int = Field(
        default=100_000, ge=0, description="ledger records one process keeps without Redis (the newest)"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _cluster(self) -> StoresConfig:
        if self.redis_cluster and (self.redis_url is None or urlsplit(self.redis_url).scheme == "unix"):
            raise ValueError(
                "redis_cluster needs a redis:// or rediss:// redis_url (any node of the cluster)"
            )
        return self
