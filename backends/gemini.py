"""Google Gemini's API (``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
``:batchEmbedContents``; key in ``x-goog-api-key``), behind OpenAI's shape.

Roles: system/developer -> ``systemInstruction``, assistant -> ``model``, tool results -> ``functionResponse``
parts (matched to their call's name through ``tool_call_id``). Safety blocks (a blocked prompt, or a
candidate stopped for SAFETY, RECITATION, …) answer ``finish_reason: content_filter``. Gemini gives calls
no ids: the gateway makes them. ``usageMetadata`` becomes usage (cached and thinking tokens included).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from errors import InvalidRequest, UpstreamConnectionError, UpstreamError, from_upstream

from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig
from .http import (
    client_timeout,
    expect_stream,
    plain_error,
    post,
    primed,
    read_error,
    read_json,
    sse_events,
    stream_json,
)
from .pool import SessionPool
from .shape import (
    DONE,
    Choice,
    ChunkWriter,
    Image,
    ToolCall,
    Usage,
    append_turn,
    completion,
    convert_content,
    function_of,
    max_tokens,
    new_id,
    stop_list,
    text_of,
    tool_arguments,
    tool_names_by_id,
)
from .wire.reasoning import budget_of

_FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "FINISH_REASON_UNSPECIFIED": "stop",
    "OTHER": "stop",
    "MALFORMED_FUNCTION_CALL": "stop",
}
# google.rpc status -> OpenAI (type, code); the HTTP status is kept.
ERROR_STATUSES: dict[str, tuple[str, str | None]] = {
    "INVALID_ARGUMENT": ("invalid_request_error", None),
    "FAILED_PRECONDITION": ("invalid_request_error", None),
    "OUT_OF_RANGE": ("invalid_request_error", None),
    "UNAUTHENTICATED": ("invalid_request_error", "invalid_api_key"),
    "PERMISSION_DENIED": ("invalid_request_error", "permission_denied"),
    "NOT_FOUND": ("invalid_request_error", "not_found"),
    "RESOURCE_EXHAUSTED": ("rate_limit_error", "rate_limit_exceeded"),
    "UNAVAILABLE": ("server_error", "overloaded"),
    "INTERNAL": ("server_error", None),
    "DEADLINE_EXCEEDED": ("timeout", "upstream_timeout"),
}


def finish_reason(reason: Any) -> str:
    if reason in _FILTERED:
        return "content_filter"
    return _FINISH.get(str(reason), "stop")


class GeminiBackend(Backend):
    def __init__(self, deployment: DeploymentConfig, pool: SessionPool) -> None:
        self.id = deployment.id
        self.deployment = deployment
        self._pool = pool
        self._timeout = client_timeout(deployment)
        model = deployment.model.removeprefix("models/")
        base = f"{deployment.base_url}/models/{quote(model, safe='')}"
        self._urls = {
            "chat": f"{base}:generateContent",
            "stream": f"{base}:streamGenerateContent?alt=sse",
            "embed": f"{base}:batchEmbedContents",
        }
        self._model = model
        self._headers = {"content-type": "application/json", **deployment.headers}
        if deployment.api_key:
            self._headers["x-goog-api-key"] = deployment.api_key

    @asynccontextmanager
    async def send(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        if endpoint is Endpoint.COMPLETIONS:
            raise InvalidRequest(
                "Gemini deployments serve chat completions and embeddings, not /v1/completions."
            )
        if endpoint is Endpoint.EMBEDDINGS:
            url, request = self._urls["embed"], _embed_request(payload, self._model)
        else:
            url, request = self._urls["stream" if stream else "chat"], to_gemini(payload)
        session = self._pool.get(self.deployment.base_url, self.deployment.proxy)
        response = await post(session, url, orjson.dumps(request), self._headers, self._timeout, self.id)
        try:
            if response.status >= 400:
                data, raw, headers = await read_error(response, self.deployment.timeouts.read_s)
                raise (
                    error_from(data, response.status, headers, self.id)
                    if isinstance(data, dict)
                    else plain_error(self.id, response.status, raw, headers)
                )
            if stream:
                expect_stream(response, "text/event-stream", self.id)
                yield UpstreamResponse(status=200, chunks=await primed(self._chunks(response), self.id))
                return
            data = await read_json(response, self.id)
            answer = (
                _embeddings(data, self._model, payload)
                if endpoint is Endpoint.EMBEDDINGS
                else from_gemini(data, self._model)
            )
            yield UpstreamResponse(status=200, body=orjson.dumps(answer), data=answer)
        finally:
            response.release()

    async def _chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        writer = ChunkWriter(new_id("chatcmpl-"), self._model)
        usage = Usage()
        finishes: dict[int, str] = {}
        tools: dict[int, int] = {}  # candidate -> tool calls so far
        async for raw in sse_events(response, self.id):
            event = stream_json(raw.data, self.id)
            if isinstance(event.get("error"), dict):
                raise error_from(event, int(event["error"].get("code") or 502), {}, self.id)
            writer.id = f"chatcmpl-{event['responseId']}" if event.get("responseId") else writer.id
            if event.get("usageMetadata"):
                usage = usage_of(event["usageMetadata"])
            if (event.get("promptFeedback") or {}).get("blockReason") and not event.get("candidates"):
                finishes[0] = "content_filter"
            for candidate in event.get("candidates") or ():
                index = int(candidate.get("index") or 0)
                if not writer.started(index):
                    yield writer.role(index)
                for part in (candidate.get("content") or {}).get("parts") or ():
                    if "functionCall" in part:
                        call = part["functionCall"]
                        tool = tools.get(index, 0)
                        tools[index] = tool + 1
                        yield writer.tool_start(tool, call_id(part), str(call.get("name")), index)
                        yield writer.tool_arguments(
                            tool, orjson.dumps(call.get("args") or {}).decode(), index
                        )
                    elif part.get("text") and part.get("thought"):
                        yield writer.reasoning(part["text"], index)
                    elif part.get("text"):
                        yield writer.text(part["text"], index)
                if candidate.get("finishReason"):
                    reason = finish_reason(candidate["finishReason"])
                    finishes[index] = "tool_calls" if tools.get(index) and reason == "stop" else reason
        if not finishes:
            raise UpstreamConnectionError(f"upstream {self.id} ended its stream before a finish reason")
        yield (
            b"".join(writer.finish(reason, index) for index, reason in sorted(finishes.items()))
            + writer.usage(usage)
            + DONE
        )


_SIGNATURE = "__thought__"


def call_id(part: dict[str, Any]) -> str:
    """An id for a function call. Gemini's thinking models sign their calls (``thoughtSignature``) and want
    the signature back with the call in the next turn: a stateless gateway carries it in the call's id."""
    base = str(part["functionCall"].get("id") or new_id("call_"))
    signature = part.get("thoughtSignature")
    return f"{base}{_SIGNATURE}{signature}" if isinstance(signature, str) and signature else base


def usage_of(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    thoughts = raw.get("thoughtsTokenCount")
    return Usage(
        prompt_tokens=int(raw.get("promptTokenCount") or 0) + int(raw.get("toolUsePromptTokenCount") or 0),
        completion_tokens=int(raw.get("candidatesTokenCount") or 0) + int(thoughts or 0),
        cached_tokens=raw.get("cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def error_from(data: dict[str, Any], status: int, headers: dict[str, str], backend_id: str) -> UpstreamError:
    error = data.get("error")
    if not isinstance(error, dict):
        return from_upstream(
            UpstreamError(f"upstream {backend_id} returned HTTP {status}", status=status, headers=headers),
            backend_id,
        )
    rpc = str(error.get("status") or "")
    type_, code = ERROR_STATUSES.get(
        rpc, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    for detail in error.get("details") or ():
        # RetryInfo ("37s") is Gemini's Retry-After.
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s") and "retry-after" not in headers:
            try:
                headers = {**headers, "retry-after": str(max(1, round(float(delay[:-1]))))}
            except ValueError:
                pass
    message = str(error.get("message") or f"upstream {backend_id} returned {rpc or status}")
    return from_upstream(
        UpstreamError(message, status=status, error_type=type_, code=code, headers=headers), backend_id
    )


def from_gemini(data: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``GenerateContentResponse`` as an OpenAI ``chat.completion``."""
    choices: list[Choice] = []
    for candidate in data.get("candidates") or ():
        choice = Choice(finish_reason=finish_reason(candidate.get("finishReason")))
        texts: list[str] = []
        thoughts: list[str] = []
        for part in (candidate.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                call = part["functionCall"]
                choice.tool_calls.append(
                    ToolCall(
                        call_id(part), str(call.get("name")), orjson.dumps(call.get("args") or {}).decode()
                    )
                )
            elif part.get("text"):
                (thoughts if part.get("thought") else texts).append(part["text"])
        choice.text, choice.reasoning = "".join(texts), "".join(thoughts)
        if choice.tool_calls and choice.finish_reason == "stop":
            choice.finish_reason = "tool_calls"
        choices.append(choice)
    if not choices:  # the prompt itself was blocked
        choices.append(Choice(finish_reason="content_filter"))
    id_ = f"chatcmpl-{data['responseId']}" if data.get("responseId") else new_id("chatcmpl-")
    return completion(
        id_, str(data.get("modelVersion") or model), choices, usage_of(data.get("usageMetadata"))
    )


def to_gemini(payload: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat-completions request as a Gemini ``GenerateContentRequest``."""
    system, contents = _contents(payload["messages"])
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("n", "candidateCount"),
    ):
        if isinstance(payload.get(ours), (int, float)) and not isinstance(payload.get(ours), bool):
            config[theirs] = payload[ours]
    limit = max_tokens(payload)
    if limit:
        config["maxOutputTokens"] = limit
    stop = stop_list(payload.get("stop"))
    if stop:
        config["stopSequences"] = stop
    response_format = payload.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            config["responseJsonSchema"] = schema
    thinking = _thinking(payload.get("reasoning_effort"))
    if thinking is not None:
        config["thinkingConfig"] = thinking
    if config:
        request["generationConfig"] = config
    tools = payload.get("tools")
    if tools:
        request["tools"] = [{"functionDeclarations": [_declaration(tool, i) for i, tool in enumerate(tools)]}]
        choice = payload.get("tool_choice")
        mode = (
            {None: "AUTO", "auto": "AUTO", "required": "ANY", "none": "NONE"}.get(choice)
            if not isinstance(choice, dict)
            else "ANY"
        )
        if mode is None:
            raise InvalidRequest("Invalid 'tool_choice'.", param="tool_choice")
        calling: dict[str, Any] = {"mode": mode}
        if isinstance(choice, dict):
            calling["allowedFunctionNames"] = [(choice.get("function") or {}).get("name")]
        request["toolConfig"] = {"functionCallingConfig": calling}
    return request


def _thinking(effort: Any) -> dict[str, Any] | None:
    """``reasoning_effort`` as Gemini's ``thinkingConfig``: ``none`` turns thinking off (budget 0), an effort
    asks for its budget (``backends/wire/reasoning.py``) and for the thoughts, returned as reasoning text."""
    if effort == "none":
        return {"thinkingBudget": 0}
    budget = budget_of(effort)
    return None if budget is None else {"thinkingBudget": budget, "includeThoughts": True}


def _declaration(tool: Any, i: int) -> dict[str, Any]:
    function = function_of(tool, i)
    out: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        # Full JSON Schema (``parameters`` only takes Gemini's OpenAPI subset).
        out["parametersJsonSchema"] = function["parameters"]
    return out


def _contents(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    names = tool_names_by_id(messages)
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        where = f"messages[{i}].content"
        if role in ("system", "developer"):
            text = text_of(content)
            if text:
                system.append({"text": text})
        elif role == "tool":
            result_id = str(message.get("tool_call_id"))
            if result_id not in names:
                raise InvalidRequest(
                    f"Invalid 'messages[{i}].tool_call_id': no earlier assistant tool call has "
                    f"the id {result_id!r}.",
                    param=f"messages[{i}].tool_call_id",
                )
            result = text_of(content)
            try:
                value = orjson.loads(result)
            except orjson.JSONDecodeError:
                value = result
            response = value if isinstance(value, dict) else {"result": value}
            append_turn(
                contents,
                "user",
                "parts",
                [{"functionResponse": {"name": names[result_id], "response": response}}],
            )
        elif role in ("user", "assistant"):
            parts = _parts(content, where)
            for j, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                part: dict[str, Any] = {
                    "functionCall": {
                        "name": str(function.get("name")),
                        "args": tool_arguments(
                            function.get("arguments"), f"messages[{i}].tool_calls[{j}].function.arguments"
                        ),
                    }
                }
                _, marker, signature = str(call.get("id")).partition(_SIGNATURE)
                if marker and signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            append_turn(contents, "user" if role == "user" else "model", "parts", parts)
        else:
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].role': {role!r} is not supported by Gemini deployments.",
                param=f"messages[{i}].role",
            )
    return system, contents


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    return convert_content(content, where, "Gemini", lambda part: {"text": part["text"]}, _image_part)


def _image_part(image: Image, where: str) -> dict[str, Any]:
    if image.url:
        return {"fileData": {"fileUri": image.url, "mimeType": image.media_type or "image/jpeg"}}
    return {"inlineData": {"mimeType": image.media_type, "data": image.data}}


def _embed_request(payload: dict[str, Any], model: str) -> dict[str, Any]:
    inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
    if not all(isinstance(text, str) for text in inputs):
        raise InvalidRequest(
            "Gemini deployments embed text only: 'input' must be a string or an array of strings.",
            param="input",
        )
    requests = []
    for text in inputs:
        one: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
        if isinstance(payload.get("dimensions"), int):
            one["outputDimensionality"] = payload["dimensions"]
        requests.append(one)
    return {"requests": requests}


def _embeddings(data: dict[str, Any], model: str, payload: dict[str, Any]) -> dict[str, Any]:
    vectors = [e.get("values") or [] for e in data.get("embeddings") or ()]
    # Gemini reports no token count for embeddings; a rough count keeps usage records non-empty.
    inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
    tokens = sum(max(1, len(text) // 4) for text in inputs)
    return {
        "object": "list",
        "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
