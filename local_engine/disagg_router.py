"""The router of a disaggregated deployment (``python -m local_engine route``).

Each completion's prefill goes to the least-busy prefill worker (``POST /v1/disagg/prefill``) and
its decode, with the returned ``kv_transfer_params``, to the least-busy decode worker, whose answer
(streamed or whole) is relayed as is; workers equally busy take turns. A prefill worker that fails, or
a worker that refuses the connection, makes way for the next free one of its role. A request goes whole
to a ``both`` worker instead when no prefill or no decode worker is free (each takes ``max_inflight``
requests; one that refused a connection sits out ``retry_after_s``), when every free prefill worker
failed, or when it asks for what a handoff does not carry (``n`` > 1, logprobs).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from local_engine.openai_api import error_body

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class RoutedWorker:
    url: str
    role: str
    inflight: int = 0
    down_until: float = 0.0


class DisaggRouter:
    def __init__(
        self,
        prefill: Sequence[str] = (),
        decode: Sequence[str] = (),
        both: Sequence[str] = (),
        *,
        max_inflight: int = 64,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = [
            RoutedWorker(url.rstrip("/"), role)
            for role, urls in (("prefill", prefill), ("decode", decode), ("both", both))
            for url in urls
        ]
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.counts = {"disaggregated": 0, "aggregated": 0, "prefill_failed": 0}
        self._turns = {role: 0 for role in ("prefill", "decode", "both")}
        self._session: aiohttp.ClientSession | None = None

    def free(self, role: str, tried: Collection[RoutedWorker] = ()) -> list[RoutedWorker]:
        now = self.clock()
        return [
            w
            for w in self.workers
            if w.role == role and w.inflight < self.max_inflight and w.down_until <= now and w not in tried
        ]

    def pick(self, role: str, tried: Collection[RoutedWorker] = ()) -> RoutedWorker | None:
        """The least-busy free ``role`` worker not in ``tried``; those equally busy take turns."""
        free = self.free(role, tried)
        if not free:
            return None
        least = [w for w in free if w.inflight == min(x.inflight for x in free)]
        self._turns[role] += 1
        return least[self._turns[role] % len(least)]

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", "invalid_request_error")
        chat = request.path.endswith("/chat/completions")
        splittable = (body.get("n") or 1) == 1 and not body.get("logprobs") and not body.get("top_logprobs")
        if splittable and self.free("decode"):
            params = await self._first("prefill", lambda w: self._prefill(w, chat, body))
            if isinstance(params, web.Response):
                return params
            if params is not None:
                # a decode worker that refused the connection never took the handoff: the next one can
                split = {**body, "kv_transfer_params": params}
                answer = await self._first("decode", lambda w: self._relay(request, w, split))
                if answer is not None:
                    self.counts["disaggregated"] += 1
                    return answer
        answer = await self._first("both", lambda w: self._relay(request, w, body))
        if answer is None:
            return _error(503, "no engine worker is free", "service_unavailable", code="no_free_worker")
        self.counts["aggregated"] += 1
        return answer

    async def _first(self, role: str, attempt: Callable[[RoutedWorker], Awaitable[T | None]]) -> T | None:
        """``attempt`` on the free ``role`` workers in turn (least busy first), until one answers not None."""
        tried: list[RoutedWorker] = []
        while (worker := self.pick(role, tried)) is not None:
            tried.append(worker)
            answer = await attempt(worker)
            if answer is not None:
                return answer
        return None

    async def _prefill(
        self, worker: RoutedWorker, chat: bool, body: dict[str, Any]
    ) -> dict[str, Any] | web.Response | None:
        worker.inflight += 1
        try:
            async with self.session.post(
                worker.url + "/v1/disagg/prefill", json={"chat": chat, "request": body}
            ) as r:
                if r.status == 200:
                    params: dict[str, Any] = (await r.json())["kv_transfer_params"]
                    return params
                if r.status < 500:  # a bad request: every worker would answer the same
                    return web.Response(body=await r.read(), status=r.status, content_type="application/json")
        except (aiohttp.ClientError, KeyError, ValueError):
            worker.down_until = self.clock() + self.retry_after_s
        finally:
            worker.inflight -= 1
        self.counts["prefill_failed"] += 1
        return None

    async def _relay(
        self, request: web.Request, worker: RoutedWorker, body: dict[str, Any]
    ) -> web.StreamResponse | None:
        """``worker``'s answer relayed; None when it refused the connection (it has seen nothing)."""
        worker.inflight += 1
        resp = None
        try:
            async with self.session.post(worker.url + request.path, json=body) as up:
                resp = web.StreamResponse(
                    status=up.status,
                    headers={"Content-Type": up.headers.get("Content-Type", "application/json")},
                )
                await resp.prepare(request)
                # When the client has gone, a write fails and leaving this block closes the upstream
                # connection: the worker aborts the request and frees its blocks.
                async for chunk in up.content.iter_any():
                    try:
                        await resp.write(chunk)
                    except ConnectionError:
                        return resp  # the client is gone, not the worker
                await resp.write_eof()
                return resp
        except aiohttp.ClientConnectionError as exc:
            worker.down_until = self.clock() + self.retry_after_s
            if resp is not None:  # mid-answer: the client sees the stream end early
                return resp
            if isinstance(exc, aiohttp.ClientConnectorError):
                return None
            return _error(
                502, f"engine worker {worker.url} failed", "service_unavailable", code="worker_failed"
            )
        finally:
            worker.inflight -= 1


def _error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    return web.json_response(error_body(message, kind, None, code), status=status)


def build_router_app(router: DisaggRouter) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await router.close()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "counts": router.counts,
                "workers": [{"url": w.url, "role": w.role, "inflight": w.inflight} for w in router.workers],
            }
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})  # the router is up; /router/stats shows its workers

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", router.handle)
    app.router.add_post("/v1/chat/completions", router.handle)
    app.router.add_get("/router/stats", stats)
    return app
