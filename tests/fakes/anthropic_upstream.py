"""A fake Anthropic Messages API on loopback, written from Anthropic's API reference.

``POST /v1/messages`` with ``x-api-key`` (or a bearer token) and ``anthropic-version``; bodies, stream events
(message_start, content_block_start/delta/stop with text_delta and input_json_delta, ping, message_delta with
usage, message_stop) and error bodies ``{"type": "error", "error": {...}}`` as documented. Model names choose
failures: ``error-429`` (rate_limit_error with retry-after), ``error-529`` (overloaded_error), any
``error-NNN``, ``stream-error`` (an error event mid-stream), ``cut-stream`` (the connection dropped
mid-stream, after two text deltas), ``early-error`` (a 200 stream whose first event is an overloaded error). Answers come from
tests/fakes/scenario.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from .openai_upstream import STATE, FakeState, Seen, lingered, send_event
from .scenario import AGENT_MODEL, Answer, Gist, agent, answer, error_status, split_arguments

CACHE_READ, CACHE_WRITE = 3, 2
CUT_AT = 5  # cut-stream: message_start, ping, the text block's start and its first two deltas go out
SIGNATURE = "sig-fake-thinking"  # what this fake signs its thinking blocks with, and wants back unchanged
THINKING_TOKENS = 4
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_STOP_REASONS = {
    "end": "end_turn",
    "tool": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
}


def error(
    status: int, message: str, type_: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": type_ or _ERROR_TYPES.get(status, "api_error"), "message": message},
    }
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers={"request-id": "req_fake", **(headers or {})},
    )


class BadRequest(Exception):
    pass


MID_CONVERSATION_SYSTEM = "mid-conversation-system-2026-04-07"


def gist(body: dict[str, Any], betas: str = "") -> Gist:
    for name, expected in (("model", str), ("max_tokens", int), ("messages", list)):
        if not isinstance(body.get(name), expected):
            raise BadRequest(f"{name}: Field required")
    tool_ids: set[str] = set()
    out = Gist(max_tokens=body["max_tokens"], stop=list(body.get("stop_sequences") or []))
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise BadRequest("system: Input should be a valid string or list")
    for i, message in enumerate(body["messages"]):
        if message.get("role") == "system" and MID_CONVERSATION_SYSTEM in betas:
            continue
        if message.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        blocks: list[dict[str, Any]] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else content
        )
        last = i == len(body["messages"]) - 1
        if last:
            out = Gist(max_tokens=out.max_tokens, stop=out.stop)
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                if not block.get("text"):
                    raise BadRequest(f"messages.{i}: text content blocks must be non-empty")
                if last:
                    out.text += block["text"]
            elif kind == "image":
                source = block.get("source") or {}
                if source.get("type") == "base64" and source.get("media_type") and source.get("data"):
                    described = source["media_type"]
                elif source.get("type") == "url" and source.get("url"):
                    described = source["url"]
                else:
                    raise BadRequest(f"messages.{i}.content: image source is invalid")
                out.images.append(described)
            elif kind in ("thinking", "redacted_thinking") and message["role"] == "assistant":
                if block.get("signature", block.get("data")) != SIGNATURE and kind == "thinking":
                    raise BadRequest(f"messages.{i}.content: Invalid `signature` in `thinking` block")
            elif kind == "tool_use" and message["role"] == "assistant":
                tool_ids.add(block["id"])
                if not isinstance(block.get("input"), dict):
                    raise BadRequest(f"messages.{i}.content: tool_use.input must be an object")
            elif kind == "tool_result" and message["role"] == "user":
                if block.get("tool_use_id") not in tool_ids:
                    raise BadRequest(
                        f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks"
                    )
                result = block.get("content")
                if last:
                    out.tool_results.append(
                        result
                        if isinstance(result, str)
                        else "".join(b.get("text", "") for b in result or ())
                    )
            else:
                raise BadRequest(f"messages.{i}.content: unexpected block type {kind!r}")
    _signed_turn(body)
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if tools and choice.get("type") != "none" and not out.tool_results:
        out.tool_name = choice.get("name") or tools[0]["name"]
    return out


def _signed_turn(body: dict[str, Any]) -> None:
    """Anthropic's rule with thinking on: tool results answer an assistant turn that must start with its
    (signed) thinking block."""
    messages = [m for m in body["messages"] if m.get("role") != "system"]
    if not _thinks(body) or len(messages) < 2:
        return
    last, turn = messages[-1], messages[-2]
    results = (
        [b for b in last.get("content") or () if isinstance(b, dict) and b.get("type") == "tool_result"]
        if isinstance(last.get("content"), list)
        else []
    )
    blocks = turn.get("content") if isinstance(turn.get("content"), list) else []
    if (
        results
        and turn.get("role") == "assistant"
        and blocks
        and blocks[0].get("type") not in ("thinking", "redacted_thinking")
    ):
        raise BadRequest(
            f"messages.{len(messages) - 2}.content.0.type: Expected `thinking` or `redacted_thinking`, "
            f"but found `{blocks[0].get('type')}`. When `thinking` is enabled, a final `assistant` "
            "message must start with a thinking block (preceeding the lastmost set of `tool_use` and "
            "`tool_result` blocks)."
        )


def _usage(body: dict[str, Any], output: int) -> dict[str, int]:
    return {
        "input_tokens": len(orjson.dumps(body["messages"])) // 4 + 1,
        "output_tokens": output,
        "cache_creation_input_tokens": CACHE_WRITE,
        "cache_read_input_tokens": CACHE_READ,
    }


def _thinks(body: dict[str, Any]) -> bool:
    return (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")


def _thought(body: dict[str, Any]) -> str:
    thinking = body.get("thinking") or {}
    return f"Thinking ({thinking.get('type')}, budget {thinking.get('budget_tokens', 'model-chosen')})."


def _blocks(plan: Answer, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if body is not None and _thinks(body):
        blocks.append({"type": "thinking", "thinking": _thought(body), "signature": SIGNATURE})
    if plan.words:
        blocks.append({"type": "text", "text": plan.text})
    for i, (name, arguments) in enumerate(plan.calls):
        blocks.append({"type": "tool_use", "id": f"toolu_fake{i}", "name": name, "input": arguments})
    return blocks


def message(body: dict[str, Any], plan: Answer) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:20]}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": _blocks(plan, body),
        "stop_reason": _STOP_REASONS[plan.stop],
        "stop_sequence": plan.stop_sequence,
        "usage": _usage(body, plan.output_tokens),
    }


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def stream_events(body: dict[str, Any], plan: Answer, *, fail: bool = False) -> list[bytes]:
    whole = message(body, plan)
    start = {
        **whole,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**whole["usage"], "output_tokens": 1},
    }
    events = [event("message_start", {"message": start}), event("ping", {})]
    index = 0
    if _thinks(body):
        events.append(
            event(
                "content_block_start",
                {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
            )
        )
        events.append(
            event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "thinking_delta", "thinking": _thought(body)}},
            )
        )
        events.append(
            event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "signature_delta", "signature": SIGNATURE}},
            )
        )
        events.append(event("content_block_stop", {"index": 0}))
        index = 1
    if plan.words:
        events.append(
            event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
        )
        for piece in plan.pieces():
            events.append(
                event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
            )
            if fail:
                return [
                    *events,
                    event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}),
                ]
        events.append(event("content_block_stop", {"index": index}))
        index += 1
    for i, (name, arguments) in enumerate(plan.calls):
        block = {"type": "tool_use", "id": f"toolu_fake{i}", "name": name, "input": {}}
        events.append(event("content_block_start", {"index": index, "content_block": block}))
        for fragment in ["", *split_arguments(orjson.dumps(arguments).decode())]:
            events.append(
                event(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "input_json_delta", "partial_json": fragment}},
                )
            )
        events.append(event("content_block_stop", {"index": index}))
        index += 1
    events.append(
        event(
            "message_delta",
            {
                "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": whole["stop_sequence"]},
                # newer API versions repeat input_tokens here, not always the cache fields
                "usage": {
                    "input_tokens": whole["usage"]["input_tokens"],
                    "output_tokens": plan.output_tokens,
                },
            },
        )
    )
    events.append(event("message_stop", {}))
    return events


async def _messages(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    # The key comes in x-api-key (the documented header) or, from newer SDKs, as a bearer token.
    presented = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix(
        "Bearer "
    )
    if state.api_key is not None and presented != state.api_key:
        return error(401, "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return error(400, "anthropic-version: header is required")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error(400, "There was an error parsing the body of your request")
    if state.record:
        state.requests.append(Seen(request.path, dict(request.query), dict(request.headers), body))
    model = str(body.get("model", ""))
    status = error_status(model)
    if status is not None:
        headers = {"retry-after": "7"} if status == 429 else None
        return error(status, "Overloaded" if status == 529 else f"fake error {status}", headers=headers)
    try:
        seen = gist(body, request.headers.get("anthropic-beta", ""))
        plan = (
            agent([t["name"] for t in body.get("tools") or ()], seen.tool_results)
            if model == AGENT_MODEL
            else answer(seen)
        )
    except BadRequest as exc:
        return error(400, str(exc))
    if not body.get("stream"):
        return web.Response(body=orjson.dumps(message(body, plan)), content_type="application/json")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    events = stream_events(body, plan, fail=model == "stream-error")
    usage = message(body, plan)["usage"]
    state.usage_sent = {
        "prompt_tokens": usage["input_tokens"] + CACHE_READ + CACHE_WRITE,
        "completion_tokens": plan.output_tokens,
    }
    if model == "early-error":  # the stream is accepted (200), then fails before message_start
        events = [event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})]
    for i, chunk in enumerate(events):
        if model == "cut-stream" and i == CUT_AT:
            assert request.transport is not None
            request.transport.abort()
            return response
        await send_event(response, state, chunk)
    await lingered(state)
    await response.write_eof()
    state.completed_streams += 1
    return response


async def _count_tokens(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = orjson.loads(await request.read())
    if state.record:
        state.requests.append(Seen(request.path, dict(request.query), dict(request.headers), body))
    if "max_tokens" in body:
        return error(400, "max_tokens: Extra inputs are not permitted")
    return web.json_response({"input_tokens": len(orjson.dumps(body["messages"])) // 4 + 1})


def build_app(state: FakeState | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = state or FakeState()
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    from . import anthropic_batches  # it answers requests as this module does

    anthropic_batches.add_routes(app)
    return app
