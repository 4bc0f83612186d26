"""A fake OpenAI server on loopback, written from OpenAI's OpenAPI spec, for tests and bench/.

Its behaviour is chosen by the request's model name, so a test picks a failure by naming it:
``error-429`` (any status), ``slow-stream``, ``hang``, ``reset``, ``cut-stream``, ``bad-json``,
``wrong-content-type``, ``error-body-200``, ``echo-auth-401`` (any status: an error whose message quotes the
request's own Authorization header, as some upstreams do); ``long-answer`` bills 16,000 completion tokens per choice (fewer
when the request's ``max_completion_tokens``/``max_tokens`` says so, as a real model stops there);
``more-prompt`` counts 30 prompt tokens more than usual (a tokenizer the gateway's estimate undercounts);
``flaky``: a 500 for a request whose last message says ``FAIL``; anything else answers normally. Every request
is recorded, and each whole answer's last message counted in ``answered`` once the answer was written.

How streams are framed is set on ``FakeState`` for every fake (this one, Anthropic's, Gemini's): line ends LF,
CRLF or CR and ``data:`` with or without its space, all valid SSE; and a stream can be held at a gate after
its first events (``hold_after``) until the test sets ``release``, so that a test sees what the client got
while the upstream has not yet sent the rest.

Run alone (for bench/): ``python -m tests.fakes.openai_upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from . import openai_responses
from .scenario import AGENT_MODEL, agent, split_arguments

SLOW_CHUNK_DELAY_S = 0.2
SLOW_CHUNKS = 10
GATE_WAIT_S = 30.0  # a stream held at its gate goes on alone after this, so that a failing test still ends


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeState:
    api_key: str | None = None
    requests: list[Seen] = field(default_factory=list)
    cancelled: int = 0
    completed_streams: int = 0
    record: bool = True
    line_end: bytes | None = None  # a stream's line ends (LF, CRLF or CR); None: the provider's own
    data_space: bool = True  # "data: {...}" as providers write it, or "data:{...}" (valid too)
    hold_after: int | None = None  # a stream waits after this many events until ``release`` is set
    release: threading.Event = field(default_factory=threading.Event)
    # a stream's connection stays open after its last event (chat's [DONE], Responses' response.completed,
    # Anthropic's message_stop) until ``release`` is set
    linger: bool = False
    events_sent: int = 0
    usage_sent: dict[str, int] | None = None  # the token counts the last stream reported, in OpenAI's terms
    answered: dict[str, int] = field(default_factory=dict)  # a whole answer's last message -> times answered
    hold_requests: threading.Event | None = None  # when not None: requests wait until it is set ...
    hold_after_answers: int = 0  # ... once this many whole answers were written
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # the Files API's (openai_batches.py)
    batches: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # the Batch APIs' (OpenAI's, Anthropic's)


def framed(event: bytes, line_end: bytes, data_space: bool) -> bytes:
    """An SSE event written with LF line ends, written instead with ``line_end`` and, if not ``data_space``,
    ``field:value`` without the space."""
    lines = event.split(b"\n")
    if not data_space:
        lines = [line.replace(b": ", b":", 1) if line[:1] not in (b"", b":") else line for line in lines]
    return line_end.join(lines)


async def send_event(
    response: web.StreamResponse, state: FakeState, event: bytes, own_line_end: bytes = b"\n"
) -> None:
    """Writes one event in the state's framing; at ``hold_after`` events, waits for ``release``."""
    state.events_sent += 1  # counted before the write: a test may see the event before this coroutine resumes
    await response.write(framed(event, state.line_end or own_line_end, state.data_space))
    if state.events_sent == state.hold_after:
        await asyncio.to_thread(state.release.wait, GATE_WAIT_S)


STATE = web.AppKey("state", FakeState)
BODY = web.RequestKey("body", dict)


async def lingered(state: FakeState) -> None:
    """The pause between a stream's last event and the end of its connection: none unless ``linger``."""
    if state.linger:
        await asyncio.to_thread(state.release.wait, GATE_WAIT_S)


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _stopped(body: dict[str, Any], words: list[str]) -> tuple[list[str], str | None]:
    """The words before the first that holds one of the request's ``stop`` strings, and that string: vLLM
    and SGLang report it as the choice's ``stop_reason``."""
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    for i, word in enumerate(words):
        hit = next((s for s in stops if s in word), None)
        if hit is not None:
            return words[:i], hit
    return words, None


def _words(body: dict[str, Any]) -> list[str]:
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        content = messages[-1].get("content")
        text = content if isinstance(content, str) else "parts"
    else:
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else "prompt"
    return ["Echo:", *text.split()][:64]


# Prompt tokens served from OpenAI's prompt cache when the request names one (``prompt_cache_key``).
CACHED = 2


def _usage(body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
    prompt = len(orjson.dumps(body.get("messages") or body.get("prompt") or "")) // 4 + 1
    if body.get("model") == "more-prompt":
        prompt += 30
    elif body.get("model") == "long-answer":
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 16_000
        completion_tokens = min(16_000, limit) * (body.get("n") or 1)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
    if body.get("prompt_cache_key"):
        usage["prompt_tokens_details"] = {"cached_tokens": min(CACHED, prompt), "audio_tokens": 0}
    return usage


def _logprobs(words: list[str]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": w,
                "logprob": -0.5,
                "bytes": list(w.encode()),
                "top_logprobs": [{"token": w, "logprob": -0.5, "bytes": list(w.encode())}],
            }
            for w in words
        ],
        "refusal": None,
    }


def _tool_call(body: dict[str, Any], index: int) -> dict[str, Any]:
    function = body["tools"][0]["function"]
    return {
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": function["name"], "arguments": orjson.dumps({"city": "Paris"}).decode()},
    }


def _chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    words, hit = _stopped(body, _words(body))
    n = body.get("n") or 1
    wants_tool = bool(body.get("tools")) and body.get("tool_choice") != "none"
    choices = []
    for i in range(n):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if wants_tool else " ".join(words),
            "refusal": None,
        }
        if wants_tool:
            message["tool_calls"] = [_tool_call(body, i)]
        choices.append(
            {
                "index": i,
                "message": message,
                "finish_reason": "tool_calls" if wants_tool else "stop",
                "logprobs": _logprobs(words) if body.get("logprobs") else None,
            }
        )
        if hit is not None and not wants_tool:
            choices[-1]["stop_reason"] = hit
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": choices,
        "usage": _usage(body, len(words) * n),
        "system_fingerprint": f"seed-{body.get('seed')}",
    }


def _chunk(
    body: dict[str, Any],
    delta: dict[str, Any],
    finish: str | None = None,
    index: int = 0,
    logprobs: Any = None,
    stop_reason: str | None = None,
) -> bytes:
    choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [choice],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def _stream_chat(request: web.Request, body: dict[str, Any], state: FakeState) -> web.StreamResponse:
    model = body["model"]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words, hit = _stopped(body, _words(body))
    if model == "slow-stream":
        words = [f"w{i}" for i in range(SLOW_CHUNKS)]
    try:
        for i in range(body.get("n") or 1):
            await send_event(response, state, _chunk(body, {"role": "assistant", "content": ""}, index=i))
            if body.get("tools") and body.get("tool_choice") != "none":
                call = _tool_call(body, i)
                args = call["function"]["arguments"]
                first = {
                    "index": 0,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                await send_event(response, state, _chunk(body, {"tool_calls": [first]}, index=i))
                for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                    await send_event(
                        response,
                        state,
                        _chunk(
                            body, {"tool_calls": [{"index": 0, "function": {"arguments": part}}]}, index=i
                        ),
                    )
                await send_event(response, state, _chunk(body, {}, "tool_calls", index=i))
                continue
            for j, word in enumerate(words):
                if model == "cut-stream" and j == 2:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if model == "slow-stream":
                    await asyncio.sleep(SLOW_CHUNK_DELAY_S)
                content = word if j == 0 else " " + word
                await send_event(
                    response,
                    state,
                    _chunk(
                        body,
                        {"content": content},
                        index=i,
                        logprobs=_logprobs([content]) if body.get("logprobs") else None,
                    ),
                )
            await send_event(response, state, _chunk(body, {}, "stop", index=i, stop_reason=hit))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": _usage(body, len(words) * (body.get("n") or 1)),
            }
            state.usage_sent = usage_chunk["usage"]
            await send_event(response, state, b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
        await send_event(response, state, b"data: [DONE]\n\n")
        await lingered(state)
        await response.write_eof()
        state.completed_streams += 1
    except asyncio.CancelledError:
        state.cancelled += 1
        raise
    except ConnectionError:
        state.cancelled += 1
    return response


async def _agent_chat(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """The model ``agent`` (tests/fakes/scenario.py): a shell call first, then an answer quoting its output."""
    messages = body["messages"]
    results: list[str] = []
    for turn in reversed(messages):
        if turn.get("role") != "tool":
            break
        content = turn.get("content")
        results.insert(
            0,
            content
            if isinstance(content, str)
            else "".join(p.get("text", "") for p in content if isinstance(p, dict)),
        )
    plan = agent([t["function"]["name"] for t in body.get("tools") or ()], results)
    calls: list[dict[str, Any]] = [
        {
            "id": f"call_agent{i}",
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
        }
        for i, (name, arguments) in enumerate(plan.calls)
    ]
    finish = "tool_calls" if calls else "stop"
    usage = _usage(body, plan.output_tokens)
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": plan.text or None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        return web.json_response(
            {
                "id": "chatcmpl-agent",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk(body, {"role": "assistant", "content": ""}))
    for piece in plan.pieces():
        await response.write(_chunk(body, {"content": piece}))
    for i, call in enumerate(calls):
        await response.write(
            _chunk(
                body,
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                },
            )
        )
        for part in split_arguments(call["function"]["arguments"]):
            await response.write(
                _chunk(body, {"tool_calls": [{"index": i, "function": {"arguments": part}}]})
            )
    await response.write(_chunk(body, {}, finish))
    if (body.get("stream_options") or {}).get("include_usage"):
        await response.write(
            b"data: "
            + orjson.dumps(
                {
                    "id": "chatcmpl-agent",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [],
                    "usage": usage,
                }
            )
            + b"\n\n"
        )
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _special(request: web.Request, model: str) -> web.StreamResponse | None:
    if model.startswith("error-") and model[6:].isdigit():
        status = int(model[6:])
        headers = {"Retry-After": "1"} if status == 429 else None
        types = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
        return _error(
            status,
            f"fake upstream error {status}",
            types.get(status, "server_error"),
            code="rate_limit_exceeded" if status == 429 else None,
            headers=headers,
        )
    if model.startswith("echo-auth-") and model[10:].isdigit():
        return _error(
            int(model[10:]),
            f"Invalid request; headers were Authorization: "
            f"{request.headers.get('Authorization')} api-key={request.headers.get('api-key')}",
        )
    if model == "hang":
        await asyncio.sleep(3600)
    if model == "reset":
        assert request.transport is not None
        request.transport.abort()
        return web.Response()
    if model == "bad-json":
        return web.Response(body=b'{"id": "chatcmpl-x", "choices": [', content_type="application/json")
    if model == "wrong-content-type":
        return web.Response(text="<html>gateway error</html>", content_type="text/html")
    if model == "flaky" and "FAIL" in _last_message(request):
        return _error(500, "fake upstream error 500", "server_error")
    if model == "error-body-200":
        return web.Response(
            body=orjson.dumps({"error": {"message": "upstream overloaded", "type": "server_error"}}),
            content_type="application/json",
        )
    return None


def _last_message(request: web.Request) -> str:
    body = request[BODY]
    messages = body.get("messages") if isinstance(body, dict) else None
    return str(messages[-1].get("content")) if isinstance(messages, list) and messages else ""


async def _handle(request: web.Request) -> web.StreamResponse:
    response = await _answer(request)
    state = request.app[STATE]
    if BODY in request and type(response) is web.Response and response.status == 200:
        await response.prepare(request)
        await response.write_eof()
        last = _last_message(request)
        state.answered[last] = state.answered.get(last, 0) + 1
    return response


async def _answer(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if state.api_key is not None:
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ") or request.headers.get(
            "api-key"
        )
        if presented != state.api_key:
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.")
    if state.record:
        state.requests.append(Seen(request.path, dict(request.query), dict(request.headers), body))
    model = body.get("model") or request.match_info.get("deployment", "")
    body["model"] = model
    request[BODY] = body
    if state.hold_requests is not None and sum(state.answered.values()) >= state.hold_after_answers:
        await asyncio.to_thread(state.hold_requests.wait, GATE_WAIT_S)  # set by the test's thread
    special = await _special(request, model)
    if special is not None:
        return special
    path = request.path
    if path.endswith("/responses"):
        return await openai_responses.handle(request, body, lambda: lingered(state))
    if path.endswith("/chat/completions") and model == AGENT_MODEL:
        return await _agent_chat(request, body)
    if path.endswith("/chat/completions"):
        if body.get("stream"):
            return await _stream_chat(request, body, state)
        return web.Response(body=orjson.dumps(_chat_completion(body)), content_type="application/json")
    if path.endswith("/embeddings"):
        return web.json_response(embeddings(body))
    if body.get("stream"):
        words = _words(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in words:
            chunk = {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": word + " ", "finish_reason": None, "logprobs": None}],
            }
            await send_event(response, state, b"data: " + orjson.dumps(chunk) + b"\n\n")
        await send_event(response, state, b"data: [DONE]\n\n")
        return response
    return web.json_response(completion(body))


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [
        {"object": "embedding", "index": i, "embedding": [float(len(str(x)) % 7) / 7, 0.5, 0.25, 0.125]}
        for i, x in enumerate(inputs)
    ]
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
    }


def completion(body: dict[str, Any]) -> dict[str, Any]:
    words = _words(body)
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
        "usage": _usage(body, len(words)),
        "choices": [{"index": 0, "text": " ".join(words), "finish_reason": "stop", "logprobs": None}],
    }


def whole_answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A request's whole answer as this fake gives it (status, body), for a batch line (openai_batches.py):
    ``flaky`` fails a line whose last message says FAIL, ``error-NNN`` any line."""
    model = str(body.get("model", ""))
    messages = body.get("messages")
    last = str(messages[-1].get("content")) if isinstance(messages, list) and messages else ""
    if model.startswith("error-") and model[6:].isdigit():
        return int(model[6:]), {
            "error": {
                "message": f"fake upstream error {model[6:]}",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    if model == "flaky" and "FAIL" in last:
        return 500, {
            "error": {
                "message": "fake upstream error 500",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    if path.endswith("/chat/completions"):
        return 200, _chat_completion(body)
    if path.endswith("/embeddings"):
        return 200, embeddings(body)
    if path.endswith("/responses"):
        return 200, openai_responses.whole(body)
    return 200, completion(body)


def build_app(state: FakeState | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = state or FakeState()
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/openai/responses",
        "/openai/deployments/{deployment}/chat/completions",
        "/openai/deployments/{deployment}/embeddings",
    ):
        app.router.add_post(path, _handle)
    from . import openai_batches  # it answers lines as this module does

    openai_batches.add_routes(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(
        build_app(FakeState(record=False)), host=args.host, port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
