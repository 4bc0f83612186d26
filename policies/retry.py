"""When to try again, how long to wait first, and how many retries the alias can afford.

Why not tenacity's retry loop: an attempt here is an async context (the upstream connection) whose body,
the relay to the client, must never be re-run; the next attempt picks another deployment, spends a shared
retry budget and must end before the request's deadline. None of that is tenacity's state, and wrapping it
cost more per request than the loop below. Its full-jitter backoff is one line (``backoff``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from errors import GatewayError, UpstreamConnectionError, UpstreamError, UpstreamTimeout

from .resilience_config import RetryConfig


def retryable(exc: GatewayError, config: RetryConfig) -> bool:
    """Connection errors, timeouts and the configured statuses; never the client's own mistakes."""
    if isinstance(exc, UpstreamConnectionError | UpstreamTimeout):
        return True
    return isinstance(exc, UpstreamError) and exc.status in config.on_status


def backoff(retry: int, config: RetryConfig) -> float:
    """Full jitter (AWS's name): uniform between 0 and the exponential ceiling, capped."""
    return random.uniform(0.0, min(config.backoff_max_s, config.backoff_base_s * 2 ** (retry - 1)))


def retry_after(exc: GatewayError, now: float) -> float | None:
    """Seconds the upstream asked us to wait: ``retry-after-ms`` (OpenAI, Azure) or ``retry-after`` (seconds,
    or an HTTP date, counted from ``now``: wall-clock seconds)."""
    headers = exc.headers
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError):
        return None


class RetryBudget:
    """Retries allowed over the last ``window_s``: ``ratio`` per request plus ``min_per_s`` per second
    (Finagle's RetryBudget), so that a failing upstream gets at most that share of extra load, while an
    alias with little traffic can still retry. Per process: each process's share holds, so the sum does."""

    def __init__(self, config: RetryConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = config.budget_ratio
        self._floor = config.budget_min_per_s * config.budget_window_s
        self._slot_s = config.budget_window_s / 10
        self._clock = clock
        self._requests = [0] * 10
        self._retries = [0] * 10
        self._slot = self._now_slot()

    def _now_slot(self) -> int:
        return int(self._clock() / self._slot_s)

    def _advance(self) -> int:
        slot = self._now_slot()
        if slot != self._slot:
            for s in range(max(self._slot + 1, slot - 9), slot + 1):
                self._requests[s % 10] = 0
                self._retries[s % 10] = 0
            self._slot = slot
        return slot % 10

    def request(self) -> None:
        self._requests[self._advance()] += 1

    def try_retry(self) -> bool:
        """Spend one retry if the budget has one."""
        index = self._advance()
        if sum(self._retries) >= self._ratio * sum(self._requests) + self._floor:
            return False
        self._retries[index] += 1
        return True
