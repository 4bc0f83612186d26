"""Waiting for a condition in tests: poll it until a deadline, never sleep a fixed time and hope."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, overload

T = TypeVar("T")

TIMEOUT_S = 10.0  # generous: a busy CI machine is slow, and a passing condition returns at once
_FIRST_S = 0.01  # the first pause: most conditions hold within milliseconds
_MOST_S = 0.1  # the longest


def pauses(first: float = _FIRST_S, most: float = _MOST_S) -> Iterator[float]:
    """The pauses between two looks at a condition: ``first``, doubling up to ``most``. A condition that costs a
    request (a /metrics scrape, an SDK call) looked at every 10 ms for the seconds a process takes to start took
    a core from what the test waited for; this looks 10 times a second after the first 0.3 s."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 2, most)


def wait_for(condition: Callable[[], T], timeout: float = TIMEOUT_S, what: str = "") -> T:
    """Calls ``condition`` until it returns something true, and returns that; AssertionError at the deadline."""
    deadline, waits = time.monotonic() + timeout, pauses()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or condition} (last: {value!r})")
        time.sleep(next(waits))


@overload
async def eventually(condition: Callable[[], Awaitable[T]], within: float = ..., what: str = ...) -> T: ...


@overload
async def eventually(condition: Callable[[], T], within: float = ..., what: str = ...) -> T: ...


async def eventually(condition: Callable[[], Any], within: float = TIMEOUT_S, what: str = "") -> Any:
    """``wait_for`` on the running loop, for an async (or plain) condition."""
    deadline, waits = time.monotonic() + within, pauses()
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {within} s: {what or condition} (last: {value!r})")
        await asyncio.sleep(next(waits))
