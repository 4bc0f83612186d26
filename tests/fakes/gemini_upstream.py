"""A fake Google Gemini API (generativelanguage, v1 and v1beta) on loopback, written from Google's API reference.

``POST /{v1,v1beta}/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` and
``:batchEmbedContents``; key in ``x-goog-api-key`` (or ``?key=``); camelCase JSON bodies; errors as
``{"error": {"code", "message", "status", "details"}}``. Model names choose failures: ``error-429``
(RESOURCE_EXHAUSTED with a RetryInfo of 7s), ``error-503``, any ``error-NNN``, ``blocked`` (the prompt is
blocked: promptFeedback.blockReason, no candidates), ``unsafe`` (the candidate stops for SAFETY),
``stream-error`` (an error object after the first event), ``cut-stream`` (the connection dropped mid-stream).
Function calls carry a ``thoughtSignature``, which must come back with the call in the next turn, as
Gemini's thinking models require.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson
from aiohttp import web

from .openai_upstream import STATE, FakeState, Seen, send_event
from .scenario import Answer, Gist, answer, error_status

CACHED = 3
_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_FINISH = {"end": "STOP", "tool": "STOP", "max_tokens": "MAX_TOKENS", "stop_sequence": "STOP"}


def error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    body = {
        "error": {
            "code": status,
            "message": message,
            "status": _STATUSES.get(status, "UNKNOWN"),
            **({"details": details} if details else {}),
        }
    }
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class BadRequest(Exception):
    pass


def _get(obj: dict[str, Any], camel: str) -> Any:
    """Gemini's JSON accepts camelCase and snake_case field names."""
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(camel, obj.get(snake))


def gist(body: dict[str, Any]) -> Gist:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    config = _get(body, "generationConfig") or {}
    out = Gist()
    called: set[str] = set()
    for i, content in enumerate(contents):
        role = content.get("role", "user")
        if role not in ("user", "model"):
            raise BadRequest(
                f"* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model."
            )
        last = i == len(contents) - 1
        if last:
            out = Gist()
        for part in content.get("parts") or ():
            if "text" in part:
                if last:
                    out.text += part["text"]
            elif _get(part, "inlineData") is not None:
                data = _get(part, "inlineData")
                if not _get(data, "mimeType") or not data.get("data"):
                    raise BadRequest(f"* contents[{i}].parts: inline_data needs mime_type and data")
                out.images.append(_get(data, "mimeType"))
            elif _get(part, "fileData") is not None:
                out.images.append(_get(_get(part, "fileData"), "fileUri"))
            elif _get(part, "functionCall") is not None and role == "model":
                call = _get(part, "functionCall")
                if _get(part, "thoughtSignature") != signature(call.get("args") or {}):
                    raise BadRequest(
                        f"Function call is missing a thought_signature in functionCall parts. (contents[{i}])"
                    )
                called.add(call["name"])
            elif _get(part, "functionResponse") is not None and role == "user":
                result = _get(part, "functionResponse")
                if result.get("name") not in called or not isinstance(result.get("response"), dict):
                    raise BadRequest(
                        f"* contents[{i}].parts: function response does not match a function call"
                    )
                value = result["response"]
                out.tool_results.append(str(value.get("result", orjson.dumps(value).decode())))
            else:
                raise BadRequest(f"* contents[{i}].parts: unknown part {sorted(part)}")
    out.stop = list(_get(config, "stopSequences") or [])
    out.max_tokens = _get(config, "maxOutputTokens")
    declarations = [d for tool in body.get("tools") or () for d in _get(tool, "functionDeclarations") or ()]
    mode = (
        (_get(body, "toolConfig") or {}).get("functionCallingConfig")
        or (_get(body, "toolConfig") or {}).get("function_calling_config")
        or {}
    ).get("mode", "AUTO")
    if declarations and mode != "NONE" and not out.tool_results:
        out.tool_name = declarations[0]["name"]
    return out


THOUGHT_TOKENS = 4  # thoughtsTokenCount of an answer that thought


def thinking(body: dict[str, Any]) -> tuple[int, bool]:
    """(thinking budget, whether the thoughts are returned) of a request; budget -1: the model decides."""
    config = _get(_get(body, "generationConfig") or {}, "thinkingConfig") or {}
    budget = _get(config, "thinkingBudget")
    budget = -1 if budget is None else budget
    if not isinstance(budget, int) or not -1 <= budget <= 32768:
        raise BadRequest(
            "* GenerateContentRequest.generation_config.thinking_config.thinking_budget: "
            "must be -1, 0 or at most 32768"
        )
    return budget, bool(_get(config, "includeThoughts"))


def _thought(body: dict[str, Any]) -> list[dict[str, Any]]:
    budget, include = thinking(body)
    return [{"text": f"Thinking (budget {budget}).", "thought": True}] if include and budget != 0 else []


def _usage(body: dict[str, Any], plan: Answer) -> dict[str, int]:
    prompt = len(orjson.dumps(body.get("contents"))) // 4 + 1
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": plan.output_tokens,
        "totalTokenCount": prompt + plan.output_tokens,
        "cachedContentTokenCount": CACHED,
    }
    if thinking(body)[0] > 0:
        usage["thoughtsTokenCount"] = THOUGHT_TOKENS
        usage["totalTokenCount"] += THOUGHT_TOKENS
    return usage


def _response(
    model: str, parts: list[dict[str, Any]], finish: str | None, usage: dict[str, int], response_id: str
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": response_id,
    }


def signature(arguments: dict[str, str]) -> str:
    return base64.b64encode(f"signed:{orjson.dumps(arguments).decode()}".encode()).decode()


def _calls(plan: Answer) -> list[dict[str, Any]]:
    return [
        {"functionCall": {"name": name, "args": arguments}, "thoughtSignature": signature(arguments)}
        for name, arguments in plan.calls
    ]


def generate(model: str, body: dict[str, Any], plan: Answer) -> dict[str, Any]:
    if model == "blocked":
        return {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": _usage(body, Answer()),
            "modelVersion": model,
            "responseId": "blocked",
        }
    parts: list[dict[str, Any]] = (
        _thought(body) + ([{"text": plan.text}] if plan.words else []) + _calls(plan)
    )
    finish = "SAFETY" if model == "unsafe" else _FINISH[plan.stop]
    return _response(model, parts, finish, _usage(body, plan), uuid.uuid4().hex[:16])


def stream(model: str, body: dict[str, Any], plan: Answer) -> list[dict[str, Any]]:
    if model in ("blocked", "unsafe"):
        return [generate(model, body, plan)]
    response_id = uuid.uuid4().hex[:16]
    usage = _usage(body, plan)
    prompt_only = {
        "promptTokenCount": usage["promptTokenCount"],
        "totalTokenCount": usage["promptTokenCount"],
    }
    pieces: list[list[dict[str, Any]]] = [[part] for part in _thought(body)] + [
        [{"text": p}] for p in plan.pieces()
    ]
    if plan.calls:
        pieces.append(_calls(plan))
    if not pieces:
        pieces = [[{"text": ""}]]
    events = [_response(model, parts, None, prompt_only, response_id) for parts in pieces[:-1]]
    events.append(_response(model, pieces[-1], _FINISH[plan.stop], usage, response_id))
    return events


async def _model(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if state.api_key is not None and key != state.api_key:
        return error(
            400,
            "API key not valid. Please pass a valid API key.",
            [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
        )
    model, _, action = request.match_info["target"].partition(":")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error(400, "Invalid JSON payload received.")
    if state.record:
        state.requests.append(Seen(request.path, dict(request.query), dict(request.headers), body))
    status = error_status(model)
    if status is not None:
        details = (
            [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
            if status == 429
            else None
        )
        return error(status, f"fake error {status}", details)
    if action == "batchEmbedContents":
        texts = ["".join(p.get("text", "") for p in r["content"]["parts"]) for r in body["requests"]]
        return web.json_response({"embeddings": [{"values": [len(t) / 10, 0.5, 0.25]} for t in texts]})
    if action not in ("generateContent", "streamGenerateContent"):
        return error(404, f"Method {action} not found")
    try:
        plan = answer(gist(body))
        thinking(body)
    except BadRequest as exc:
        return error(400, str(exc))
    if action == "generateContent":
        return web.Response(body=orjson.dumps(generate(model, body, plan)), content_type="application/json")
    if request.query.get("alt") != "sse":
        return error(400, "this fake streams server-sent events only (alt=sse)")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i, chunk in enumerate(stream(model, body, plan)):
        if model == "cut-stream" and i == 1:
            assert request.transport is not None
            request.transport.abort()
            return response
        if model == "stream-error" and i == 1:
            # Gemini reports a failure after the stream began as an error object in the next event.
            chunk = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
        if "usageMetadata" in chunk:
            usage = chunk["usageMetadata"]
            state.usage_sent = {
                "prompt_tokens": usage["promptTokenCount"],
                "completion_tokens": usage.get("candidatesTokenCount", 0),
            }
        # Gemini frames its stream with CRLF.
        await send_event(response, state, b"data: " + orjson.dumps(chunk) + b"\n\n", own_line_end=b"\r\n")
        if "error" in chunk:
            break
    await response.write_eof()
    state.completed_streams += 1
    return response


def build_app(state: FakeState | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = state or FakeState()
    for version in ("v1", "v1beta"):
        app.router.add_post(f"/{version}/models/{{target}}", _model)
    return app
