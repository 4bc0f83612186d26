"""Secrets an upstream writes into a stream (its own API key in a text delta, an error event quoting the
``Authorization`` header it was sent) scrubbed before they reach the client, the cache or the log.

Every event is scrubbed of the exact secrets the gateway holds (``errors.secrets``), whole strings at C speed;
error events of the credential-shaped patterns too (content is not: a model may rightly write ``token: …``).
A secret a model streams a few characters at a time is split across events, so each text delta (OpenAI's
``choices[].delta``, Anthropic's ``content_block_delta``, the Responses API's ``response.*.delta``) keeps back
the end of its text that could begin a secret (at most the longest secret's length, usually nothing) and sends
it with the next delta of the same block; a block that ends holding text gets one more delta with it before
its end event. Network chunking does not matter: events are scrubbed once they are whole.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from backends import UpstreamResponse, sse
from errors import secrets

_MARK = "\x00held\x00"
_MARK_JSON = orjson.dumps(_MARK)


class _Tables:
    """What scrubbing needs of a set of secrets, built once per set (not per stream)."""

    def __init__(self, known: frozenset[str]) -> None:
        self.known = known
        ordered = sorted(known, key=len, reverse=True)
        self.text = re.compile("|".join(re.escape(v) for v in ordered))
        self.bytes = re.compile(b"|".join(re.escape(v.encode()) for v in ordered))
        self.prefixes = frozenset(v[:k] for v in known for k in range(1, len(v)))
        self.starts = frozenset(v[0] for v in known)
        self.longest = len(ordered[0])
        self.encoded = tuple(v.encode() for v in ordered)


_tables: _Tables | None = None


def _tables_for(known: frozenset[str]) -> _Tables:
    global _tables
    if _tables is None or _tables.known is not known:
        _tables = _Tables(known)
    return _tables


class StreamScrubber:
    """One stream's scrubbing state: what each text block holds back, and the event to send it in."""

    def __init__(self, known: frozenset[str]) -> None:
        tables = _tables_for(known)
        self._text, self._bytes = tables.text, tables.bytes
        self._prefixes, self._starts, self._longest = tables.prefixes, tables.starts, tables.longest
        self._held: dict[
            tuple[Any, ...], tuple[str, str, bytes]
        ] = {}  # block -> (text, event name, template)

    def event(self, event: sse.Event) -> bytes:
        """The event, scrubbed, after any held text of the blocks it ends."""
        if event.done:
            return self.flush() + sse.encode(event.data, event.event)
        data = self._bytes.sub(secrets.REDACTED.encode(), event.data)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return sse.encode(secrets.scrub(data.decode(errors="replace")), event.event)
        if not isinstance(obj, dict):
            return sse.encode(data, event.event)
        if event.event == "error" or "error" in obj or obj.get("type") in ("error", "response.failed"):
            return sse.encode(orjson.dumps(_scrub_all(obj)), event.event)
        before, changed = b"", False
        if self._held:
            for start in _ended(obj):
                before += b"".join(self._flush(block) for block in list(self._held) if block[:2] == start)
        for block, container, field in deltas(obj):
            text = container[field]
            pending = self._text.sub(secrets.REDACTED, self._held.pop(block, ("",))[0] + text)
            keep = self._prefix_len(pending)
            if keep:
                container[field] = _MARK  # the template of the delta that will carry the held text
                self._held[block] = (pending[-keep:], event.event, orjson.dumps(obj))
                pending = pending[:-keep]
            if pending != text or keep:
                container[field], changed = pending, True
        return before + sse.encode(orjson.dumps(obj) if changed else data, event.event)

    def flush(self) -> bytes:
        """Every block's held text, each in a delta of its own (the stream ends)."""
        return b"".join(self._flush(block) for block in list(self._held))

    def _flush(self, block: tuple[Any, ...]) -> bytes:
        held = self._held.pop(block, None)
        if held is None:
            return b""
        text, name, template = held
        return sse.encode(template.replace(_MARK_JSON, orjson.dumps(text), 1), name)

    def _prefix_len(self, text: str) -> int:
        """The length of the longest end of ``text`` that is the start of a secret (0: none)."""
        starts, prefixes = self._starts, self._prefixes
        for k in range(min(len(text), self._longest - 1), 0, -1):
            if text[-k] in starts and text[-k:] in prefixes:
                return k
        return 0


def deltas(obj: dict[str, Any]) -> list[tuple[tuple[Any, ...], dict[str, Any], str]]:
    """(block, container, field) of each text delta in one event of any of the three stream formats."""
    found: list[tuple[tuple[Any, ...], dict[str, Any], str]] = []
    choices = obj.get("choices")
    if choices:  # OpenAI chat and completions: first, the hot path
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for field in _CHAT_FIELDS:
                    if isinstance(delta.get(field), str):
                        found.append((("c", index, field), delta, field))
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                        found.append((("c", index, "tool", call.get("index")), function, "arguments"))
            elif isinstance(choice.get("text"), str):
                found.append((("c", index, "text"), choice, "text"))
        return found
    kind = obj.get("type")
    if kind == "content_block_delta":  # Anthropic: text, thinking, a tool's input JSON
        delta = obj.get("delta")
        if isinstance(delta, dict):
            for field in ("text", "thinking", "partial_json"):
                if isinstance(delta.get(field), str):
                    found.append((("a", obj.get("index"), field), delta, field))
    elif isinstance(kind, str) and kind.endswith(".delta") and isinstance(obj.get("delta"), str):  # Responses
        found.append((("r", obj.get("output_index"), obj.get("content_index"), kind), obj, "delta"))
    return found


_CHAT_FIELDS = ("content", "reasoning_content", "refusal")


def _ended(obj: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """The starts of the block keys an event ends (their held text must go out before it)."""
    kind = obj.get("type")
    if kind == "content_block_stop":
        yield "a", obj.get("index")
    elif isinstance(kind, str):
        if kind.endswith(".done"):
            yield "r", obj.get("output_index")
    else:
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                yield "c", choice.get("index")


def _scrub_all(value: Any) -> Any:
    if isinstance(value, str):
        return secrets.scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_all(v) for v in value]
    return value


async def scrubbed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` (an upstream's event stream in any of the three formats) without the gateway's secrets."""
    known = secrets.known()
    if not known:
        async for chunk in chunks:
            yield chunk
        return
    scrubber = StreamScrubber(known)
    decoder = sse.Decoder()
    async for piece in chunks:
        out = b"".join(scrubber.event(event) for event in decoder.feed(piece))
        if out:
            yield out
    tail = b"".join(scrubber.event(event) for event in decoder.close()) + scrubber.flush()
    if tail:
        yield tail


def scrub_whole(answer: UpstreamResponse) -> None:
    """A whole answer (raw and parsed) without the gateway's secrets: a search per secret first (C speed, a
    few µs for a 10 KB answer); the answer is rewritten only when one is there."""
    known = secrets.known()
    if not known or answer.chunks is not None:
        return
    tables = _tables_for(known)
    raw = (
        answer.body
        if answer.body is not None
        else orjson.dumps(answer.data)
        if answer.data is not None
        else b""
    )
    if not any(secret in raw for secret in tables.encoded):
        return
    raw = tables.bytes.sub(secrets.REDACTED.encode(), raw)
    answer.body = raw
    if answer.data is not None:
        answer.data = orjson.loads(raw)
