"""Prefix-aware routing among the workers of one model: consistent hashing with bounded loads.

A request's key is the start of its prompt (about the engine's first KV blocks); the key hashes to a point on
a ring of workers' virtual nodes and goes to the first worker clockwise whose load is under the bound
``ceil(LOAD_FACTOR * (total + 1) / workers)``, or a floor a worker handles at no cost (Mirrokni, Thorup and Zadimoghaddam's consistent hashing with
bounded loads). Requests that share a prefix thus meet the worker whose prefix cache holds it, unless that
worker is overloaded; adding or removing a worker moves only the keys of its own arcs.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import Any, Protocol, TypeVar

VIRTUAL_NODES = 64
LOAD_FACTOR = 1.25
# Characters of the prompt that make the key: a few 16-token blocks of text (roughly 4 characters a token).
PREFIX_CHARS = 256


class Member(Protocol):
    name: str
    inflight: int


M = TypeVar("M", bound=Member)


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def prompt_prefix(payload: dict[str, Any]) -> str:
    """The routing key of an OpenAI chat or completions request: its prompt's first characters."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):  # content parts: their text
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{message.get('role')}:{content if isinstance(content, str) else ''}\n")
            if sum(map(len, parts)) >= PREFIX_CHARS:
                break
        text = "".join(parts)
    else:
        prompt = payload.get("prompt")
        text = prompt if isinstance(prompt, str) else str(prompt)
    return text[:PREFIX_CHARS]


class PrefixRing:
    """A hash ring of named members; :meth:`pick` chooses among the members given, by key and load."""

    def __init__(self) -> None:
        self._points: list[int] = []
        self._owners: dict[int, str] = {}

    def add(self, member: Member) -> None:
        for i in range(VIRTUAL_NODES):
            point = _point(f"{member.name}#{i}")
            if point not in self._owners:
                bisect.insort(self._points, point)
                self._owners[point] = member.name

    def remove(self, member: Member) -> None:
        gone = [p for p, name in self._owners.items() if name == member.name]
        for point in gone:
            del self._owners[point]
        self._points = [p for p in self._points if p in self._owners]

    def pick(self, key: str, members: list[M], floor: int = 1) -> M:
        """The first member clockwise from ``key`` whose load is under the bound; members not on the ring
        (not added yet) are chosen by load only. ``floor``: a load below it is never too much (a worker
        batches that many sequences at no cost, so affinity should not break at a light load)."""
        by_name = {m.name: m for m in members}
        bound = max(floor, math.ceil(LOAD_FACTOR * (sum(m.inflight for m in members) + 1) / len(members)))
        if self._points:
            start = bisect.bisect(self._points, _point(key))
            seen: set[str] = set()
            for i in range(len(self._points)):
                name = self._owners[self._points[(start + i) % len(self._points)]]
                member = by_name.get(name)
                if member is None or name in seen:
                    continue
                seen.add(name)
                if member.inflight < bound:
                    return member
        return min(members, key=lambda m: m.inflight)
