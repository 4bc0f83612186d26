"""The response cache: exact, then semantic. Not built yet (issue 5): every lookup misses."""

from __future__ import annotations

from backends import UpstreamResponse

from ..call import Call


class ResponseCache:
    def wants(self, call: Call) -> bool:
        """Whether this request's answer may be stored (so the pipeline keeps a stream's events)."""
        return False

    async def lookup(self, call: Call) -> UpstreamResponse | None:
        return None

    def store(self, call: Call, answer: UpstreamResponse) -> None:
        """Store a completed answer (off the request's path). ``call.collected`` holds a stream's events."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
