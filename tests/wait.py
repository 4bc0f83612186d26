"""Waiting for a condition in tests: poll it until a deadline, never sleep a fixed time and hope."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

TIMEOUT_S = 10.0  # generous: a busy CI machine is slow, and a passing condition returns at once
_EVERY_S = 0.01


def wait_for(condition: Callable[[], T], timeout: float = TIMEOUT_S, what: str = "") -> T:
    """Calls ``condition`` until it returns something true, and returns that; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or condition} (last: {value!r})")
        time.sleep(_EVERY_S)


@overload
async def eventually(condition: Callable[[], Awaitable[T]], within: float = ..., what: str = ...) -> T: ...


@overload
async def eventually(condition: Callable[[], T], within: float = ..., what: str = ...) -> T: ...


async def eventually(condition: Callable[[], Any], within: float = TIMEOUT_S, what: str = "") -> Any:
    """``wait_for`` on the running loop, for an async (or plain) condition."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {within} s: {what or condition} (last: {value!r})")
        await asyncio.sleep(_EVERY_S)
