"""The request pipeline between the HTTP handler and the upstream, in ARCHITECTURE.md's order:

    admission (budget, rate limits + queue, concurrency, ledger reservation)
      -> cache lookup -> resilience (router, retries, fallbacks, breakers) -> backend
    after: usage -> cost -> ledger settlement (admission's exit), cache store

It knows no HTTP: handlers (OpenAI endpoints in proxy.py, Anthropic's in messages.py) render the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson

from backends import Endpoint, UpstreamResponse, spans, sse
from backends.wire.chunks import Relayed, TextReader
from errors import GatewayError
from policies import chunking, ledger, tokens
from policies.admission import Admission
from policies.cache import ResponseCache
from policies.call import Call
from policies.context import ContextPolicies
from policies.resilience import Resilience
from policies.shadow import Shadows
from policies.variant_history import VariantHistory

from .security import streams

_USAGE = b'"usage"'
_NATIVE = (Endpoint.RESPONSES, Endpoint.MESSAGES, Endpoint.COUNT_TOKENS)


class Pipeline:
    def __init__(
        self,
        admission: Admission,
        cache: ResponseCache,
        resilience: Resilience,
        context: ContextPolicies | None = None,
        versions: VariantHistory | None = None,
        shadows: Shadows | None = None,
    ) -> None:
        self.admission = admission
        self.shadows = shadows  # mirrors a share of a variant's requests to another (policies/shadow.py)
        self.context = context
        self.versions = versions  # the aliases' variants and their change history
        self.cache = cache
        self.resilience = resilience

    @asynccontextmanager
    async def answer(self, call: Call) -> AsyncIterator[UpstreamResponse]:
        """The answer to ``call``: from the cache or an upstream. A stream's ``chunks`` must be consumed
        inside the context; leaving it settles usage and cost and stores a completed answer."""
        if call.stream and call.endpoint is not Endpoint.EMBEDDINGS:
            options = call.body.get("stream_options")
            call.client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        if call.record.trace is not None:
            call.record.trace.request(call.body)
        if self.versions is not None:  # first: the variant's system prompt counts against the window
            self.versions.variants.choose(call)
        if self.context is not None:  # before admission: it reserves for the prompt that is sent
            await self.context.fit(call)
        admitting = spans.start("admission")
        async with self.admission.admit(call):
            spans.end(admitting)
            looking = spans.start("cache")
            hit = await self.cache.lookup(call)
            spans.end(looking)
            if hit is not None:
                yield _as_asked(call, hit)
                if call.shadow is not None and self.shadows is not None:
                    self.shadows.mirror(
                        call, hit.data if hit.data is not None or hit.body is None else orjson.loads(hit.body)
                    )
                return
            if call.stream and self.cache.wants(call):
                call.collected = []
            async with self.resilience.send(call) as upstream:
                if upstream.chunks is not None:
                    upstream.chunks = streams.scrubbed(
                        upstream.chunks
                    )  # secrets out, before the cache and the client
                    if call.endpoint not in _NATIVE:  # a native format's handler reads its own usage
                        upstream.chunks = self._ledgered(call, _tap(call, upstream.chunks))
                    if call.collected is not None:
                        upstream.chunks = self._store_at_end(call, upstream, upstream.chunks)
                else:
                    streams.scrub_whole(upstream)
                    if upstream.data is not None and call.endpoint not in _NATIVE:
                        call.usage = upstream.data.get("usage")
                        call.record.take_usage(call.usage)
                    call.completed = True
                yield _as_asked(call, upstream)  # the cache keeps what the upstream answered
            if call.completed and call.collected is None and self.cache.wants(call):
                self.cache.store(call, upstream)
            if call.shadow is not None and call.completed and self.shadows is not None:
                self.shadows.mirror(call, upstream.data)  # in the background, once the answer is whole

    async def usage(self, tenant: str, days: list[str], group_by: ledger.GroupBy) -> list[dict[str, Any]]:
        """The ledger's usage rows of ``tenant`` over ``days`` (the admin API)."""
        return await ledger.usage(self.admission.store, tenant, days, group_by)

    async def broken(self, call: Call, relayed: Relayed) -> None:
        """Puts a stream that broke off after some of it went out on the record, which the ledger settles
        once: the prompt (the upstream's count where it sent one, else the estimate) and the tokens of what
        was relayed, with the deployment's tokenizer where known (else about four characters a token).
        Nothing when the upstream's own usage came before the break."""
        record = call.record
        if record.prompt_tokens is not None or record.completion_tokens is not None:
            return
        encoding = self._encoding(record.deployment)
        usage = dict(relayed.usage) if relayed.usage and relayed.usage.get("prompt_tokens") else {}
        if not usage:
            usage["prompt_tokens"] = (
                call.prompt_tokens
                if call.prompt_tokens is not None
                else await tokens.count_prompt(call.endpoint, call.body, encoding)
            )
        usage["completion_tokens"] = tokens.count_text(relayed.text(), encoding)
        record.take_usage(usage)

    def _encoding(self, deployment: str | None) -> Any | None:
        """The tokenizer of the deployment that answered, where one was loaded at start (never here: loading
        one takes seconds on the loop; the gateway loads them only where a limit or a stream needs counts)."""
        for route in self.resilience.router.all_routes():
            if route.id == deployment:
                return self.admission.encoding(route.alias)
        return None

    async def _ledgered(self, call: Call, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A chat pass-through stream, what went out kept (the tap's own blobs, by reference) until it ends:
        one that breaks off is put on the record at what was relayed (``broken``), read as the translated
        paths read it (``TextReader``)."""
        kept = call.collected if call.collected is not None else []
        own = kept is not call.collected
        try:
            async for events in chunks:
                if own:
                    kept.append(events)
                yield events
        except GatewayError:
            reader = TextReader()
            for event in sse.decode(b"".join(kept)):
                if event.data[:1] == b"{":
                    try:
                        chunk = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(chunk, dict):
                        reader.read(chunk)
            await self.broken(call, reader.relayed)
            raise

    async def _store_at_end(
        self, call: Call, upstream: UpstreamResponse, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
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
        if self.versions is not None:
            await self.versions.start()
        await self.resilience.start()
        await self.cache.start()
        await self.admission.start()

    async def close(self) -> None:
        if self.shadows is not None:
            await self.shadows.close()
        if self.versions is not None:
            await self.versions.close()
        await self.admission.close()
        await self.cache.close()
        await self.resilience.close()


def _as_asked(call: Call, answer: UpstreamResponse) -> UpstreamResponse:
    """The answer as the client asked for it: for embeddings split by the chunk context policy, one vector
    per input (or every chunk's) from the chunks' vectors."""
    if call.chunks is None or answer.chunks is not None:
        return answer
    data = answer.data if answer.data is not None else orjson.loads(answer.body or b"{}")
    return replace(answer, data=chunking.combine(call.chunks, data), body=None)


async def _tap(call: Call, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Passes a stream's SSE events on as they come, each once it is whole, in LF framing whatever the
    upstream's; on the way: takes the usage, drops the usage-only chunk the client did not ask for (backends
    ask for it to count tokens), keeps the events when a policy wants them, and marks the call completed at
    ``[DONE]``."""
    decoder = sse.Decoder()
    async for piece in chunks:
        events = decoder.feed(piece)
        if events:
            out = _relay(call, events)
            if out:
                yield out
    events = decoder.close()
    if events and (out := _relay(call, events)):
        yield out


def _relay(call: Call, events: list[sse.Event]) -> bytes:
    out: list[bytes] = []
    for event in events:
        payload = event.data
        if event.done:
            call.completed = True
        elif _USAGE in payload:
            kept = _take_usage(call, payload)
            if kept is None:
                continue
            payload = kept
        out.append(sse.encode(payload, event.event))
    blob = b"".join(out)
    if call.collected is not None and blob:
        call.collected.append(blob)
    return blob


def _take_usage(call: Call, payload: bytes) -> bytes | None:
    """The event's data with the usage taken (and removed if the client did not ask for it); None to drop
    the usage-only chunk requested on the client's behalf."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload
    if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
        call.usage = chunk["usage"]
        call.record.take_usage(call.usage)
        if not call.client_wants_usage:
            if not chunk.get("choices"):
                return None
            chunk.pop("usage")
            return orjson.dumps(chunk)
    return payload
