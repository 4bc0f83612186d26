"""Time as the policies read it: wall-clock seconds, a monotonic clock, the UTC day and waiting, from one
clock that is handed in, so that tests move time instead of waiting for it and no result depends on the date.

Deadlines that ``asyncio`` enforces (``asyncio.timeout_at``) stay on the event loop's own clock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (days, ledger timestamps, breaker cool-downs)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back (intervals, rate windows)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Waits ``seconds`` (a retry's back-off or ``Retry-After``)."""
        ...


class SystemClock:
    """The machine's clocks and ``asyncio.sleep``: what a running gateway uses."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = SystemClock()


class ManualClock:
    """A clock that moves only when told to (``advance``) or when something sleeps on it: a sleep returns
    at once, having moved the clock by its length, and is remembered in ``slept``."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._offset = time.monotonic() - self._now  # monotonic() keeps the machine's scale, moved in step
        self.slept: list[float] = []

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)


def utc_day(seconds: float) -> str:
    """The UTC day (``YYYY-MM-DD``) that ``seconds`` since the epoch fall on."""
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))
