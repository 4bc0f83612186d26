"""Token buckets of a request (per tenant, per key, per tenant x model alias) and OpenAI's
``x-ratelimit-*`` headers from their levels."""

from __future__ import annotations

import math

from .config import Limits
from .stores.base import Bucket, Slot


def buckets(limits: Limits, key_prefix: str, scope: str, tokens: int, tokens_explicit: bool) -> list[Bucket]:
    """The request and token buckets of one ``Limits``. When the client set no ``max_tokens``, the token
    cost is capped at the bucket's capacity (the default reservation must not make a request too large)."""
    out: list[Bucket] = []
    if limits.rpm is not None:
        capacity = float(limits.rpm_burst or limits.rpm)
        out.append(
            Bucket(f"{key_prefix}:rpm", capacity, limits.rpm / 60.0, 1.0, "requests", scope, limits.rpm)
        )
    if limits.tpm is not None:
        capacity = float(limits.tpm_burst or limits.tpm)
        cost = float(tokens) if tokens_explicit else min(float(tokens), capacity)
        out.append(
            Bucket(f"{key_prefix}:tpm", capacity, limits.tpm / 60.0, cost, "tokens", scope, limits.tpm)
        )
    return out


def slots(limits: Limits, key_prefix: str, scope: str) -> list[Slot]:
    if limits.max_concurrency is None:
        return []
    return [Slot(f"{key_prefix}:inflight", limits.max_concurrency, scope)]


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{int(rest)}s"


def headers(planned: list[Bucket], levels: list[float]) -> dict[str, str]:
    """For requests and for tokens, the bucket with the least left answers (as OpenAI reports its tightest)."""
    out: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        tightest: tuple[float, Bucket] | None = None
        for bucket, level in zip(planned, levels, strict=False):
            if bucket.kind == kind and (tightest is None or level < tightest[0]):
                tightest = (level, bucket)
        if tightest is None:
            continue
        level, bucket = tightest
        out[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
        out[f"x-ratelimit-remaining-{kind}"] = str(max(math.floor(level), 0))
        out[f"x-ratelimit-reset-{kind}"] = duration(max(bucket.capacity - level, 0) / bucket.rate)
    return out
