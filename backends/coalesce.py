"""Batch lines bound for a managed engine worker travel many per HTTP request (``POST /v1/batch``).

The worker pool (backends/workers.py) hands a :class:`Coalescer` the non-streamed chat/completions requests
at batch priority (a gateway batch's lines carry ``priority`` 1 for the engine's scheduler), each once its
worker is picked (prefix-aware, counted in flight as any request): those bound for the same worker within
``window_s`` of the first, or until ``max_lines`` wait, go as one ``/v1/batch`` call, and its NDJSON answer
resolves each caller as its line arrives (the engine answers each request as it finishes). A line's error is
the ``UpstreamError`` its own request would have raised; a call that breaks off (the worker died) fails the
lines it had not answered with ``UpstreamConnectionError``, so the pool's send-once-more applies to each.
Live (priority 0) and streamed requests keep one HTTP request each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import orjson
from prometheus_client import Counter

from errors import UpstreamConnectionError, UpstreamError, UpstreamTimeout, from_upstream

from .base import Endpoint, UpstreamResponse
from .http import plain_error, post, read_error
from .openai import OpenAIBackend, _error_from_body
from .pool import SessionPool

_ENDPOINTS = (Endpoint.CHAT, Endpoint.COMPLETIONS)  # what the engine's /v1/batch carries
_HEADERS = {"content-type": "application/x-ndjson"}

BATCH_CALLS = Counter(
    "gateway_engine_worker_batch_calls_total",
    "POST /v1/batch calls to engine workers, each carrying the batch lines that met in its window",
    ["deployment"],
)
BATCH_CALL_LINES = Counter(
    "gateway_engine_worker_batch_call_lines_total", "Batch lines sent in /v1/batch calls", ["deployment"]
)


@dataclass(eq=False)
class _Line:
    endpoint: Endpoint
    payload: dict[str, Any]
    answer: asyncio.Future[UpstreamResponse]


class Coalescer:
    def __init__(
        self,
        deployment_id: str,
        pool: SessionPool,
        timeout: aiohttp.ClientTimeout,
        *,
        window_s: float,
        max_lines: int,
    ) -> None:
        self.id = deployment_id
        self._pool = pool
        self._timeout = timeout
        self.window_s = window_s
        self.max_lines = max_lines
        self._waiting: dict[OpenAIBackend, list[_Line]] = {}
        self._timers: dict[OpenAIBackend, asyncio.TimerHandle] = {}
        self._calls: set[asyncio.Task[None]] = set()

    def applies(self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool) -> bool:
        """Whether a request travels in a ``/v1/batch`` call: non-streamed chat or completions at a priority
        after live requests' (0), the coalescer on (a window above zero)."""
        priority = payload.get("priority")
        return (
            self.window_s > 0
            and not stream
            and endpoint in _ENDPOINTS
            and isinstance(priority, int)
            and not isinstance(priority, bool)
            and priority > 0
        )

    @asynccontextmanager
    async def send(
        self, worker: OpenAIBackend, endpoint: Endpoint, payload: dict[str, Any]
    ) -> AsyncIterator[UpstreamResponse]:
        """``payload`` (its ``model`` set) answered by ``worker``'s engine in a call shared with other lines."""
        line = _Line(endpoint, payload, asyncio.get_running_loop().create_future())
        waiting = self._waiting.setdefault(worker, [])
        waiting.append(line)
        if len(waiting) >= self.max_lines:
            self._flush(worker)
        elif len(waiting) == 1:
            self._timers[worker] = asyncio.get_running_loop().call_later(self.window_s, self._flush, worker)
        try:
            answer = await line.answer
        finally:
            if line in self._waiting.get(worker, ()):  # its caller left before it was sent
                self._waiting[worker].remove(line)
        yield answer

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for lines in self._waiting.values():
            _fail(lines, lambda: UpstreamConnectionError("the engine worker pool closed"))
        self._waiting.clear()
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*list(self._calls), return_exceptions=True)

    def _flush(self, worker: OpenAIBackend) -> None:
        if (timer := self._timers.pop(worker, None)) is not None:
            timer.cancel()
        lines = [line for line in self._waiting.pop(worker, []) if not line.answer.done()]
        if lines:
            BATCH_CALLS.labels(self.id).inc()
            BATCH_CALL_LINES.labels(self.id).inc(len(lines))
            task = asyncio.create_task(self._call(worker, lines), name=f"batch call {worker.id}")
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, worker: OpenAIBackend, lines: list[_Line]) -> None:
        """One ``/v1/batch`` call for ``lines``; those it leaves unanswered fail (cancelled: at close)."""
        error: Callable[[], UpstreamError] = partial(
            UpstreamConnectionError, f"upstream {worker.id} ended its batch call before answering every line"
        )
        try:
            error = await self._exchange(worker, lines) or error
        except UpstreamError as exc:  # unreachable, or timed out before answering
            error = partial(type(exc), str(exc))
        except (TimeoutError, aiohttp.ServerTimeoutError):
            error = partial(UpstreamTimeout, f"upstream {worker.id} timed out while answering")
        except aiohttp.ClientError as exc:
            error = partial(
                UpstreamConnectionError, f"upstream {worker.id} broke off its answer: {type(exc).__name__}"
            )
        except (
            ValueError,
            KeyError,
            TypeError,
            IndexError,
        ) as exc:  # not the engine's NDJSON (orjson's is a ValueError)
            error = partial(UpstreamError, f"upstream {worker.id} returned a malformed batch answer: {exc!r}")
        finally:
            _fail(lines, error)

    async def _exchange(
        self, worker: OpenAIBackend, lines: list[_Line]
    ) -> Callable[[], UpstreamError] | None:
        """Sends the call and resolves each line as its answer comes; a refusal of the whole call is returned
        (as the error each line gets)."""
        body = b"".join(
            orjson.dumps({"custom_id": str(i), "url": f"/v1/{line.endpoint.value}", "body": line.payload})
            + b"\n"
            for i, line in enumerate(lines)
        )
        base = worker.deployment.base_url
        response = await post(self._pool.get(base), f"{base}/batch", body, _HEADERS, self._timeout, worker.id)
        try:
            if response.status != 200:
                data, raw, headers = await read_error(response, worker.deployment.timeouts.read_s)
                if not isinstance(data, dict):
                    return partial(plain_error, worker.id, response.status, raw, headers)
                return partial(_refusal, worker.id, response.status, data, headers)
            pending = b""
            async for chunk in response.content.iter_any():
                *complete, pending = (pending + chunk).split(b"\n")
                for raw_line in complete:
                    if raw_line.strip():
                        _answer(worker.id, lines, raw_line)
            return None
        finally:
            response.release()


def _refusal(backend_id: str, status: int, data: dict[str, Any], headers: dict[str, str]) -> UpstreamError:
    error = _error_from_body(data, status, backend_id)
    error.headers = headers
    return from_upstream(error, backend_id)


def _answer(backend_id: str, lines: list[_Line], raw: bytes) -> None:
    """One NDJSON answer line to its caller: a success as ``OpenAIBackend`` yields it, else its error."""
    data = orjson.loads(raw)
    line = lines[int(data["index"])]
    if line.answer.done():
        return
    status, body = int(data["status"]), data.get("body")
    if not isinstance(body, dict):
        line.answer.set_exception(
            UpstreamError(f"upstream {backend_id} returned a body that is not a JSON object")
        )
    elif status >= 400:
        line.answer.set_exception(_refusal(backend_id, status, body, {}))
    elif body.get("error") and "choices" not in body:
        line.answer.set_exception(_error_from_body(body, 502, backend_id))
    else:
        line.answer.set_result(UpstreamResponse(status=status, body=orjson.dumps(body), data=body))


def _fail(lines: list[_Line], error: Callable[[], UpstreamError]) -> None:
    for line in lines:
        if not line.answer.done():
            line.answer.set_exception(error())
