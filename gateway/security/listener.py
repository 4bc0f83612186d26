"""The listener's connection caps (total and per client IP) and its file-descriptor budget.

A connection over a cap is closed as soon as it is accepted, before aiohttp reads a byte of it, so idle or
slow connections (slowloris) cannot take every descriptor; ``header_timeout_s`` (aiohttp's keep-alive timer,
which also runs until a connection's first request head is complete) closes the ones that stay silent.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import Response, StreamResponse

from ..logs import get_logger
from .config import ListenerLimits

FD_RESERVE = 128  # log files, the request log's SQLite, Redis, the listeners, the event loop's own


class ConnectionGuard:
    """Counts client connections, total and per IP, and says which may stay."""

    def __init__(self, limits: ListenerLimits, max_connections: int) -> None:
        self.max_connections = max_connections
        self.max_per_ip = limits.max_connections_per_ip
        self.open = 0
        self.per_ip: Counter[str] = Counter()
        self.refused = 0
        self._ip: dict[Any, str] = {}

    def admit(self, handler: Any, transport: asyncio.Transport) -> bool:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        if self.open >= self.max_connections or self.per_ip[ip] >= self.max_per_ip:
            self.refused += 1
            return False
        self.open += 1
        self.per_ip[ip] += 1
        self._ip[handler] = ip
        return True

    def release(self, handler: Any) -> None:
        ip = self._ip.pop(handler, None)
        if ip is not None:
            self.open -= 1
            self.per_ip[ip] -= 1
            if not self.per_ip[ip]:
                del self.per_ip[ip]

    def install(self, server: web.Server) -> None:
        """Makes the runner's aiohttp server this guard's (aiohttp builds it inside ``AppRunner.setup`` and
        offers no hook for its connections or its handler class, hence the class swap)."""
        server.__class__ = _GuardedServer
        server.guard = self  # type: ignore[attr-defined]


class _Handler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """A request aiohttp could not parse or handle: an OpenAI-shaped error that echoes nothing of the
        request (aiohttp's own answer and log line quote the offending header, an API key included)."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; no error answer can follow")
        get_logger().warning(
            "malformed request" if status < 500 else "request failed outside the app",
            remote=request.remote,
            status=status,
            reason=type(exc).__name__ if exc else None,
        )
        error = {
            "error": {
                "message": "Malformed HTTP request." if status < 500 else "Internal error.",
                "type": "invalid_request_error" if status < 500 else "api_error",
                "param": None,
                "code": "malformed_request" if status < 500 else "internal_error",
            }
        }
        response = Response(
            status=status,
            body=orjson.dumps(error),
            content_type="application/json",
            headers={"Server": "llm-gateway"},
        )
        response.force_close()
        return response


class _GuardedServer(web.Server):
    guard: ConnectionGuard

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if not self.guard.admit(handler, transport):
            transport.abort()  # before aiohttp reads a byte: costs no buffer, and frees the descriptor now
            return
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.guard.release(handler)
        super().connection_lost(handler, exc)


def fd_budget(limits: ListenerLimits, upstream_connections: int) -> int:
    """The client connections this process can hold: raises the soft descriptor limit to the hard one when
    needed, and lowers ``max_connections`` (with a warning) when even that cannot hold them all next to the
    upstream pool and ``FD_RESERVE``."""
    needed = limits.max_connections + upstream_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return limits.max_connections
    allowed = max(1, soft - upstream_connections - FD_RESERVE)
    get_logger().warning(
        "file descriptor limit below the configured connections; client connections capped",
        nofile=soft,
        max_connections=limits.max_connections,
        capped_to=allowed,
    )
    return allowed
