"""What a tenant's PII policy and guardrail do to one request: ``inbound`` before the pipeline (mask, block,
judge the input), ``outbound`` on the answer (restore placeholders, judge the output)."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from backends import Endpoint, UpstreamResponse, sse
from errors import InvalidRequest
from errors.secrets import REDACTED
from policies.call import Call
from policies.record import RequestRecord

from ..config import TenantConfig
from ..pipeline import Pipeline
from . import streams
from .config import GuardrailConfig, PIIConfig
from .privacy import Masker, Privacy, map_texts, restored

_policies: dict[int, tuple[PIIConfig, Privacy]] = {}


def _privacy(config: PIIConfig) -> Privacy:
    # Built once per config object (a reload makes new ones); the config is kept so its id cannot be reused.
    found = _policies.get(id(config))
    if found is None or found[0] is not config:
        found = _policies[id(config)] = (config, Privacy(config))
    return found[1]


@dataclass(slots=True)
class Screen:
    """One request's screening: the body for the upstream, the body for the log, and what the answer needs."""

    body: dict[str, Any]
    logged: dict[str, Any]
    masker: Masker | None = None
    guardrail: GuardrailConfig | None = None
    pipeline: Pipeline | None = None
    call: Call | None = None

    async def outbound(self, answer: UpstreamResponse) -> UpstreamResponse:
        if self.guardrail is not None and self.guardrail.on != "input":
            if answer.chunks is None:
                data = answer.data if answer.data is not None else orjson.loads(answer.body or b"{}")
                await _judge(self, _answer_text(data))
            else:
                answer = dataclasses.replace(answer, chunks=_judged(self, answer.chunks))
        if self.masker is not None:
            answer = restored(answer, self.masker)
        return answer


async def inbound(
    pipeline: Pipeline,
    tenant: TenantConfig,
    key_id: str,
    endpoint: Endpoint,
    body: dict[str, Any],
    record: RequestRecord,
) -> Screen:
    if tenant.pii is None and tenant.guardrail is None:
        return Screen(body, body)
    screen = Screen(body, body, guardrail=tenant.guardrail, pipeline=pipeline)
    if tenant.pii is not None:
        sent, screen.masker = _privacy(tenant.pii).inbound(endpoint, body)
        screen.body = sent
        screen.logged = sent if sent is not body else map_texts(endpoint, body, screen.masker.mask)
    if tenant.guardrail is not None:
        screen.call = Call(
            record=record,
            tenant=tenant.name,
            key_id=key_id,
            alias=tenant.guardrail.alias,
            endpoint=Endpoint.CHAT,
            body={},
            stream=False,
        )
        if tenant.guardrail.on != "output":
            texts: list[str] = []

            def collect(text: str) -> str:
                texts.append(text)
                return text

            map_texts(endpoint, screen.body, collect)
            await _judge(screen, "\n".join(texts))
    return screen


def _answer_text(data: dict[str, Any]) -> str:
    """The text of a whole answer: OpenAI's choices, Anthropic's content blocks, the Responses API's output."""
    texts = [
        str((c.get("message") or {}).get("content") or c.get("text") or "") for c in data.get("choices") or ()
    ]
    blocks = data.get("content")
    texts += [
        str(b.get("text"))
        for b in (blocks if isinstance(blocks, list) else ())
        if isinstance(b, dict) and b.get("text")
    ]
    for item in data.get("output") or ():
        if isinstance(item, dict):
            texts += [
                str(p.get("text")) for p in item.get("content") or () if isinstance(p, dict) and p.get("text")
            ]
    return "\n".join(texts)


_STREAM_ENDS = frozenset(
    {
        "message_delta",
        "message_stop",
        "response.completed",
        "response.incomplete",
        "response.output_text.done",
        "response.output_item.done",
    }
)


async def _judged(screen: Screen, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """An answer's stream, its text held back and judged a window (``stream_window_chars``) at a time and at
    the end: a safe window goes out; an unsafe one ends the stream with the caller's error event (the handler
    writes it) or, with ``stream_action: redact``, goes out as ``[redacted]``."""
    guard = screen.guardrail
    assert guard is not None
    decoder = sse.Decoder()
    held: list[tuple[sse.Event, Any, list[tuple[dict[str, Any], str]]]] = []
    size = 0
    before = ""  # the end of the text already judged: a phrase split across two windows is judged whole

    async def release() -> bytes:
        nonlocal size, before
        text = "".join(container[field] for _, _, deltas in held for container, field in deltas)
        out, native_responses = [], False
        judged, before = before + text, (before + text)[-guard.stream_window_chars :]
        if text and await _verdict(screen, judged):
            native_responses = any(
                isinstance(o, dict) and str(o.get("type", "")).startswith("response.") for _, o, _ in held
            )
            if guard.stream_action == "end" or native_responses:  # its .done events repeat the whole text
                raise _blocked("The answer was stopped by this tenant's content guardrail.")
            first = True
            for _, _, deltas in held:
                for container, field in deltas:
                    container[field], first = (REDACTED if first else ""), False
        for event, obj, deltas in held:
            out.append(
                sse.encode(orjson.dumps(obj), event.event) if deltas else sse.encode(event.data, event.event)
            )
        held.clear()
        size = 0
        return b"".join(out)

    async for piece in chunks:
        out = []
        for event in decoder.feed(piece):
            try:
                obj = None if event.done else orjson.loads(event.data)
            except orjson.JSONDecodeError:
                obj = None
            deltas = [(c, f) for _, c, f in streams.deltas(obj)] if isinstance(obj, dict) else []
            if not deltas and not held and not event.done:
                out.append(sse.encode(event.data, event.event))
                continue
            held.append((event, obj, deltas))
            size += sum(len(c[f]) for c, f in deltas)
            if size >= guard.stream_window_chars or event.done or _ends(obj):
                if out:  # what was judged safe goes out before a verdict that may end the stream
                    yield b"".join(out)
                out = [await release()]
        if out:
            yield b"".join(out)
    for event in decoder.close():
        held.append((event, None, []))
    if held:
        yield await release()


def _ends(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    if obj.get("type") in _STREAM_ENDS:
        return True
    return any(isinstance(c, dict) and c.get("finish_reason") is not None for c in obj.get("choices") or ())


def _blocked(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="content_policy_violation")


async def _judge(screen: Screen, text: str) -> None:
    """Refuses the request when the tenant's moderation alias judges ``text`` unsafe."""
    if await _verdict(screen, text):
        raise _blocked("The request was refused by this tenant's content guardrail.")


async def _verdict(screen: Screen, text: str) -> bool:
    """True when the tenant's moderation alias, asked through this gateway's own pipeline (limits, budget,
    fallbacks, cache), answers with a verdict matching ``block_if``."""
    guard, parent, pipeline = screen.guardrail, screen.call, screen.pipeline
    assert guard is not None and parent is not None and pipeline is not None
    messages = [{"role": "system", "content": guard.instructions}] if guard.instructions else []
    record = RequestRecord(
        request_id=f"{parent.record.request_id}-guardrail",
        started=time.perf_counter(),
        endpoint="guardrail",
        tenant=parent.tenant,
        key_id=parent.key_id,
        alias=guard.alias,
    )
    call = Call(
        record=record,
        tenant=parent.tenant,
        key_id=parent.key_id,
        alias=guard.alias,
        endpoint=Endpoint.CHAT,
        stream=False,
        body={
            "model": guard.alias,
            "temperature": 0,
            "messages": [*messages, {"role": "user", "content": text}],
        },
    )
    async with pipeline.answer(call) as answer:
        data = answer.data if answer.data is not None else orjson.loads(answer.body or b"{}")
    choices = data.get("choices") or [{}]
    verdict = str((choices[0].get("message") or {}).get("content") or "")
    return re.search(guard.block_if, verdict) is not None
