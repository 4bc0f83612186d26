"""Stored Responses (``store: true``): kept per tenant for ``GET``/``DELETE /v1/responses/{id}``, their input
items, and ``previous_response_id``.

One small async interface (``get``/``put``/``delete``) so the store layer can take it over; this
implementation keeps them in the process's memory, each for ``ttl_s`` and at most ``limit`` in all (the
oldest go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Stored:
    response: dict[str, Any]         # the response object as the client got it
    input: list[dict[str, Any]]      # this request's input items
    context: list[dict[str, Any]]    # the items before them (earlier turns), for previous_response_id


class StoredResponses:
    def __init__(self, ttl_s: float, limit: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._limit = limit
        self._clock = clock
        self._items: OrderedDict[tuple[str, str], tuple[float, Stored]] = OrderedDict()

    async def get(self, tenant: str, response_id: str) -> Stored | None:
        """The tenant's stored response; None if it is unknown, expired, or another tenant's."""
        entry = self._items.get((tenant, response_id))
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._items[(tenant, response_id)]
            return None
        return entry[1]

    async def put(self, tenant: str, response_id: str, stored: Stored) -> None:
        self._items[(tenant, response_id)] = (self._clock() + self._ttl_s, stored)
        self._items.move_to_end((tenant, response_id))
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    async def erase(self, tenant: str) -> int:
        """Removes every response the tenant stored; returns how many."""
        doomed = [key for key in self._items if key[0] == tenant]
        for key in doomed:
            del self._items[key]
        return len(doomed)

    async def delete(self, tenant: str, response_id: str) -> bool:
        return await self.get(tenant, response_id) is not None and \
            self._items.pop((tenant, response_id), None) is not None
