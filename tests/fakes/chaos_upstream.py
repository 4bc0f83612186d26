"""A fault-injecting fake OpenAI upstream on loopback: the test sets its faults while it runs.

Faults are chosen per upstream model name (``"*"``: any model), so one server can hold a failing and a
healthy deployment. Each ``Fault`` fails a share (``rate``) of requests, or only the next ``times`` ones:

    status              HTTP ``status`` with an OpenAI error body (``Retry-After`` / ``retry-after-ms`` if set)
    slow_first_token    headers at once, the first chunk (or the body) after ``delay_s``
    hang                never answers
    reset               closes the connection without an answer
    cut_stream          a stream that breaks after two chunks (a non-stream request: reset)
    bad_json            200 with a truncated JSON body (a stream: a chunk that is not JSON, then nothing)
    wrong_content_type  200 text/html
    error_body_200      200 whose JSON body is an OpenAI error

Run alone (bench/, the kill-and-restart test): ``python -m tests.fakes.chaos_upstream --port 9000
--fault status --status 500 --rate 0.3``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import _chat_completion, _chunk, _usage, _words


@dataclass
class Fault:
    kind: str = "none"
    rate: float = 1.0
    times: int | None = None  # fail only the next N requests (then answer normally)
    status: int = 500
    code: str | None = None  # the error body's code (e.g. context_length_exceeded)
    retry_after: str | None = None
    retry_after_ms: str | None = None
    delay_s: float = 1.0
    seed: int | None = None  # the share that fails, drawn from its own seeded generator
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def fires(self) -> bool:
        if self.kind == "none":
            return False
        if self.times is not None:
            if self.times <= 0:
                return False
            self.times -= 1
            return True
        return self.rate >= 1.0 or self._rng.random() < self.rate


@dataclass
class ChaosState:
    faults: dict[str, Fault] = field(default_factory=dict)
    latency_s: float = 0.0  # added to every answer (bench: a realistic upstream)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)  # by model
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    sessions: list[str] = field(default_factory=list)  # x-session-id seen, in order (sticky routing)

    def fault(self, model: str) -> Fault | None:
        return self.faults.get(model) or self.faults.get("*")


STATE = web.AppKey("chaos", ChaosState)


def _error(status: int, message: str, code: str | None, headers: dict[str, str]) -> web.Response:
    types = {400: "invalid_request_error", 429: "rate_limit_error"}
    body = {
        "error": {"message": message, "type": types.get(status, "server_error"), "param": None, "code": code}
    }
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


async def _inject(request: web.Request, fault: Fault, stream: bool) -> web.StreamResponse | None:
    kind = fault.kind
    if kind == "status":
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = fault.retry_after_ms
        return _error(fault.status, f"chaos: injected {fault.status}", fault.code, headers)
    if kind == "hang":
        await asyncio.sleep(3600)
    if kind == "reset" or (kind == "cut_stream" and not stream):
        assert request.transport is not None
        request.transport.abort()
        return web.Response()
    if kind == "bad_json":
        if stream:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"id": "chatcmpl-x", "choices": [\n\n')
            assert request.transport is not None
            request.transport.abort()
            return response
        return web.Response(body=b'{"id": "chatcmpl-x", "choices": [', content_type="application/json")
    if kind == "wrong_content_type":
        return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
    if kind == "error_body_200":
        return web.Response(
            body=orjson.dumps({"error": {"message": "chaos: overloaded", "type": "server_error"}}),
            content_type="application/json",
        )
    return None


async def _stream(request: web.Request, body: dict[str, Any], fault: Fault | None) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if fault is not None and fault.kind == "slow_first_token":
        await asyncio.sleep(fault.delay_s)
    words = _words(body)
    await response.write(_chunk(body, {"role": "assistant", "content": ""}))
    for j, word in enumerate(words):
        if fault is not None and fault.kind == "cut_stream" and j == 2:
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(_chunk(body, {"content": word if j == 0 else " " + word}))
    await response.write(_chunk(body, {}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [],
            "usage": _usage(body, len(words)),
        }
        await response.write(b"data: " + orjson.dumps(usage) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.", None, {})
    model = str(body.get("model", ""))
    state.requests[model] += 1
    if "x-session-id" in request.headers:
        state.sessions.append(request.headers["x-session-id"])
    if state.latency_s:
        await asyncio.sleep(state.latency_s)
    stream = body.get("stream") is True
    fault = state.fault(model)
    if fault is not None and fault.fires():
        state.failed[model] += 1
        injected = await _inject(request, fault, stream)
        if injected is not None:
            return injected
    else:
        fault = None
    if stream:
        return await _stream(request, body, fault)
    if fault is not None and fault.kind == "slow_first_token":
        await asyncio.sleep(fault.delay_s)
    if request.path.endswith("/embeddings"):
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response(
            {
                "object": "list",
                "model": model,
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.5, 0.25]} for i in range(len(inputs))
                ],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )
    return web.Response(body=orjson.dumps(_chat_completion(body)), content_type="application/json")


def build_app(state: ChaosState | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = state or ChaosState()
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        app.router.add_post(path, _handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--fault", default="none")
    parser.add_argument("--status", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    state = ChaosState(
        faults={"*": Fault(args.fault, rate=args.rate, status=args.status)}, latency_s=args.latency_ms / 1000
    )
    web.run_app(build_app(state), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
