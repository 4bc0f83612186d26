"""Budgets in USD per UTC day and month, per tenant and per key: the spend counters a request draws on."""

from __future__ import annotations

import time

from .config import Budget
from .stores.base import NANO, Spend

_DAY_TTL_S = 3 * 86400
_MONTH_TTL_S = 35 * 86400


_today: tuple[int, str, str] = (-1, "", "")


def today(now: float | None = None) -> tuple[str, str]:
    """(``YYYY-MM-DD``, ``YYYY-MM``) in UTC."""
    global _today
    second = int(time.time() if now is None else now)
    if _today[0] != second:  # formatted once a second, not once a request
        day = time.strftime("%Y-%m-%d", time.gmtime(second))
        _today = (second, day, day[:7])
    return _today[1], _today[2]


def spends(budget: Budget, key_prefix: str, scope: str, day: str, month: str) -> list[Spend]:
    out: list[Spend] = []
    for limit, period, name, ttl in ((budget.daily_usd, f"d:{day}", "daily", _DAY_TTL_S),
                                     (budget.monthly_usd, f"m:{month}", "monthly", _MONTH_TTL_S)):
        if limit is not None:
            nano = round(limit * NANO)
            out.append(Spend(f"{key_prefix}:spend:{period}", nano, round(nano * budget.soft_ratio), ttl,
                             f"{scope} {name}"))
    return out
