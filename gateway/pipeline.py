"""The request pipeline between the HTTP handler and the upstream, in ARCHITECTURE.md's order:

    admission (budget, rate limits + queue, concurrency, ledger reservation)
      -> cache lookup -> resilience (router, retries, fallbacks, breakers) -> backend
    after: usage -> cost -> ledger settlement (admission's exit), cache store

It knows no HTTP: handlers (OpenAI endpoints in proxy.py, Anthropic's in messages.py) render the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson

from backends import Endpoint, UpstreamResponse
from policies.admission import Admission
from policies.cache import ResponseCache
from policies.call import Call
from policies.resilience import Resilience

_USAGE = b'"usage"'


class Pipeline:
    def __init__(self, admission: Admission, cache: ResponseCache, resilience: Resilience) -> None:
        self.admission = admission
        self.cache = cache
        self.resilience = resilience

    @asynccontextmanager
    async def answer(self, call: Call) -> AsyncIterator[UpstreamResponse]:
        """The answer to ``call``: from the cache or an upstream. A stream's ``chunks`` must be consumed
        inside the context; leaving it settles usage and cost and stores a completed answer."""
        if call.stream and call.endpoint is not Endpoint.EMBEDDINGS:
            options = call.body.get("stream_options")
            call.client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        async with self.admission.admit(call):
            hit = await self.cache.lookup(call)
            if hit is not None:
                yield hit
                return
            if call.stream and self.cache.wants(call):
                call.collected = []
            async with self.resilience.send(call) as upstream:
                if upstream.chunks is not None:
                    upstream.chunks = _tap(call, upstream.chunks)
                    if call.collected is not None:
                        upstream.chunks = self._store_at_end(call, upstream, upstream.chunks)
                else:
                    if upstream.data is not None:
                        call.usage = upstream.data.get("usage")
                        call.record.take_usage(call.usage)
                    call.completed = True
                yield upstream
            if call.completed and call.collected is None and self.cache.wants(call):
                self.cache.store(call, upstream)

    async def _store_at_end(self, call: Call, upstream: UpstreamResponse,
                            chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A stream is handed to the cache before its last events go out, as a whole answer is before it
        is sent: a client that asks again as soon as its stream ended finds it stored."""
        async for events in chunks:
            if call.completed:
                self.cache.store(call, upstream)
                yield events
                async for rest in chunks:  # nothing after [DONE] in practice: passed on, never stored twice
                    yield rest
                return
            yield events

    async def start(self) -> None:
        await self.resilience.start()
        await self.cache.start()
        await self.admission.start()

    async def close(self) -> None:
        await self.admission.close()
        await self.cache.close()
        await self.resilience.close()


async def _tap(call: Call, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Passes a stream's SSE events on as they come, whole events only, and on the way: takes the usage,
    drops the usage-only chunk the client did not ask for (backends ask for it to count tokens), keeps the
    events when a policy wants them, and marks the call completed at ``[DONE]``."""
    tail = b""
    async for piece in chunks:
        data = tail + piece if tail else piece
        end = data.rfind(b"\n\n")
        if end < 0:
            tail = data
            continue
        events, tail = data[:end + 2], data[end + 2:]
        if _USAGE in events:
            events = _take_usage(call, events)
        if b"data: [DONE]" in events:
            call.completed = True
        if call.collected is not None:
            call.collected.append(events)
        if events:
            yield events
    if tail:
        yield tail


def _take_usage(call: Call, events: bytes) -> bytes:
    kept: list[bytes] = []
    for event in events.split(b"\n\n"):
        if event.startswith(b"data: {") and _USAGE in event:
            try:
                chunk = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                chunk = None
            if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                call.usage = chunk["usage"]
                call.record.take_usage(call.usage)
                if not call.client_wants_usage:
                    if not chunk.get("choices"):
                        continue  # the usage-only chunk we asked for on the client's behalf
                    chunk.pop("usage")
                    event = b"data: " + orjson.dumps(chunk)
        kept.append(event)
    return b"\n\n".join(kept)
