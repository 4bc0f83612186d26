"""Per-tenant PII policy (``tenants[].pii``) applied to a request and its answer.

``log_only``: the request goes upstream as sent; what the gateway logs of it (``log_prompts``) is masked.
``mask``: each PII value becomes a placeholder (``[EMAIL_1]``) before the upstream sees it, and placeholders in
the answer are turned back into the values, streams included (a placeholder split across stream events is held
back until it is whole). ``block``: a request holding PII is refused with 400 ``pii_detected``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from backends import Endpoint, UpstreamResponse, sse
from errors import InvalidRequest

from .config import PIIConfig
from .pii import Detector

_PARTIAL = re.compile(r"\[[A-Z_]*\d*$")  # the start of a placeholder at the end of streamed text


class Masker:
    """One request's placeholders: the same value gets the same placeholder throughout the request."""

    def __init__(self, detector: Detector) -> None:
        self._detector = detector
        self.placeholders: dict[str, str] = {}  # value -> placeholder
        self.values: dict[str, str] = {}  # placeholder -> value
        self.kinds: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def mask(self, text: str) -> str:
        spans = self._detector.find(text)
        if not spans:
            return text
        out, last = [], 0
        for span in spans:
            value = text[span.start : span.end]
            placeholder = self.placeholders.get(value)
            if placeholder is None:
                count = sum(1 for p in self.values if p.startswith(f"[{span.kind.upper()}_")) + 1
                placeholder = f"[{span.kind.upper()}_{count}]"
                self.placeholders[value], self.values[placeholder] = placeholder, value
            self.kinds.add(span.kind)
            out += [text[last : span.start], placeholder]
            last = span.end
        out.append(text[last:])
        self._pattern = None
        return "".join(out)

    def restore(self, text: str) -> str:
        if not self.values or "[" not in text:
            return text
        if self._pattern is None:
            self._pattern = re.compile("|".join(re.escape(p) for p in self.values))
        return self._pattern.sub(lambda m: self.values[m.group()], text)


def map_texts(endpoint: Endpoint, body: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """``body`` with ``change`` applied to every text a model reads: message contents (and their text parts),
    prompts, embedding inputs."""
    body = dict(body)
    if endpoint in (Endpoint.CHAT, Endpoint.MESSAGES):  # Anthropic's text blocks have "text" too
        messages = []
        for message in body.get("messages") or ():
            content = message.get("content")
            if isinstance(content, str):
                message = {**message, "content": change(content)}
            elif isinstance(content, list):
                message = {
                    **message,
                    "content": [
                        {**part, "text": change(part["text"])}
                        if isinstance(part, dict) and isinstance(part.get("text"), str)
                        else part
                        for part in content
                    ],
                }
            messages.append(message)
        body["messages"] = messages
    elif endpoint is Endpoint.RESPONSES:  # instructions, and the input: a string or items
        if isinstance(body.get("instructions"), str):
            body["instructions"] = change(body["instructions"])
        value = body.get("input")
        if isinstance(value, str):
            body["input"] = change(value)
        elif isinstance(value, list):
            body["input"] = [_item_texts(item, change) if isinstance(item, dict) else item for item in value]
    else:
        field = "prompt" if endpoint is Endpoint.COMPLETIONS else "input"
        value = body.get(field)
        if isinstance(value, str):
            body[field] = change(value)
        elif isinstance(value, list):
            body[field] = [change(v) if isinstance(v, str) else v for v in value]
    return body


def _item_texts(item: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """A Responses input item with ``change`` applied to its texts: a message's content (a string or parts with
    ``text``), a tool's output."""
    content = item.get("content")
    if isinstance(content, str):
        item = {**item, "content": change(content)}
    elif isinstance(content, list):
        item = {
            **item,
            "content": [
                {**part, "text": change(part["text"])}
                if isinstance(part, dict) and isinstance(part.get("text"), str)
                else part
                for part in content
            ],
        }
    if isinstance(item.get("output"), str):
        item = {**item, "output": change(item["output"])}
    return item


class Privacy:
    """A tenant's PII policy, built once per config."""

    def __init__(self, config: PIIConfig) -> None:
        self.mode = config.mode
        self.detector = Detector(config.kinds, dict(config.rules), config.words)

    def inbound(self, endpoint: Endpoint, body: dict[str, Any]) -> tuple[dict[str, Any], Masker]:
        """The body to send upstream, and the request's masker (its ``kinds`` say what was found)."""
        masker = Masker(self.detector)
        masked = map_texts(endpoint, body, masker.mask)
        if self.mode == "block" and masker.kinds:
            raise InvalidRequest(
                f"The request contains personal data ({', '.join(sorted(masker.kinds))}); this "
                "tenant's policy refuses it.",
                code="pii_detected",
            )
        return (masked if self.mode == "mask" else body), masker


def restored(answer: UpstreamResponse, masker: Masker) -> UpstreamResponse:
    """``answer`` with the masker's placeholders turned back into the values."""
    if not masker.values:
        return answer
    if answer.chunks is not None:
        return dataclasses.replace(answer, chunks=_restore_stream(answer.chunks, masker))
    body = answer.body if answer.body is not None else orjson.dumps(answer.data)
    for placeholder, value in masker.values.items():
        body = body.replace(placeholder.encode(), orjson.dumps(value)[1:-1])
    return dataclasses.replace(answer, body=body, data=None)


async def _restore_stream(chunks: AsyncIterator[bytes], masker: Masker) -> AsyncIterator[bytes]:
    decoder = sse.Decoder()
    held: dict[tuple[int, str], str] = {}  # (choice, field) -> text not yet sent: maybe half a placeholder
    async for chunk in chunks:
        out = b"".join(_event(event, masker, held) for event in decoder.feed(chunk))
        if out:
            yield out
    tail = b"".join(_event(event, masker, held) for event in decoder.close())
    if tail:
        yield tail


def _event(event: sse.Event, masker: Masker, held: dict[tuple[int, str], str]) -> bytes:
    try:
        chunk = None if event.done else orjson.loads(event.data)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        return sse.encode(event.data, event=event.event)
    kind = chunk.get("type")
    if isinstance(kind, str) and kind.startswith("response."):  # the Responses API's own stream
        return _responses_event(event, chunk, kind, masker, held)
    if kind == "content_block_delta" and isinstance(chunk.get("delta"), dict):
        # Anthropic's own stream (native /v1/messages): a text block's deltas, closed by content_block_stop
        _restore(chunk["delta"], "text", (int(chunk.get("index") or 0), "text"), False, masker, held)
    for choice in chunk.get("choices") or ():
        index = choice.get("index", 0)
        finished = choice.get("finish_reason") is not None
        for container, field in ((choice.get("delta"), "content"), (choice, "text")):
            if not isinstance(container, dict):
                continue
            text = container.get(field)
            if not isinstance(text, str) and not (finished and (index, field) in held):
                continue
            _restore(container, field, (index, field), finished, masker, held)
    return sse.encode(orjson.dumps(chunk), event=event.event)


def _responses_event(
    event: sse.Event, chunk: dict[str, Any], kind: str, masker: Masker, held: dict[tuple[int, str], str]
) -> bytes:
    """A text delta restored as a chat delta is; any other event (``*.done``, ``response.completed``: whole
    texts) restored everywhere, after a delta with what its block held back."""
    slot = (int(chunk.get("output_index") or 0) * 1000 + int(chunk.get("content_index") or 0), "delta")
    if kind.endswith(".delta") and isinstance(chunk.get("delta"), str):
        _restore(chunk, "delta", slot, False, masker, held)
        return sse.encode(orjson.dumps(chunk), event=event.event)
    before = b""
    if kind.endswith(".done") and slot in held:
        rest: dict[str, Any] = {
            k: chunk[k] for k in ("item_id", "output_index", "content_index", "sequence_number") if k in chunk
        }
        rest.update(type=kind[:-5] + ".delta", delta=masker.restore(held.pop(slot)))
        before = sse.encode(orjson.dumps(rest), event=rest["type"])
    data = event.data
    for placeholder, value in masker.values.items():
        data = data.replace(placeholder.encode(), orjson.dumps(value)[1:-1])
    return before + sse.encode(data, event=event.event)


def _restore(
    container: dict[str, Any],
    field: str,
    slot: tuple[int, str],
    finished: bool,
    masker: Masker,
    held: dict[tuple[int, str], str],
) -> None:
    text = container.get(field)
    pending = held.pop(slot, "") + (text if isinstance(text, str) else "")
    partial = None if finished else _PARTIAL.search(pending)
    if partial is not None:
        held[slot] = pending[partial.start() :]
        pending = pending[: partial.start()]
    container[field] = masker.restore(pending)
