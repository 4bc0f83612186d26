"""Budgets in USD per UTC day and month, per tenant and per key: the spend counters a request draws on."""

from __future__ import annotations

from .clock import utc_day
from .config import Budget
from .stores.base import NANO, Spend

_DAY_TTL_S = 3 * 86400
_MONTH_TTL_S = 35 * 86400


_today: tuple[int, str, str] = (-1, "", "")


def today(now: float) -> tuple[str, str]:
    """(``YYYY-MM-DD``, ``YYYY-MM``) in UTC at ``now`` (seconds since the epoch, from the policies' clock)."""
    global _today
    second = int(now)
    if _today[0] != second:  # formatted once a second, not once a request
        day = utc_day(second)
        _today = (second, day, day[:7])
    return _today[1], _today[2]


def spends(budget: Budget, key_prefix: str, scope: str, day: str, month: str) -> list[Spend]:
    out: list[Spend] = []
    for limit, period, name, ttl in (
        (budget.daily_usd, f"d:{day}", "daily", _DAY_TTL_S),
        (budget.monthly_usd, f"m:{month}", "monthly", _MONTH_TTL_S),
    ):
        if limit is not None:
            nano = round(limit * NANO)
            out.append(
                Spend(
                    f"{key_prefix}:spend:{period}",
                    nano,
                    round(nano * budget.soft_ratio),
                    ttl,
                    f"{scope} {name}",
                )
            )
    return out
