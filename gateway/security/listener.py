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

from aiohttp import web

from ..logs import get_logger
from .config import ListenerLimits

FD_RESERVE = 128   # log files, the request log's SQLite, Redis, the listeners, the event loop's own


class ConnectionGuard:
    def __init__(self, limits: ListenerLimits, max_connections: int) -> None:
        self.max_connections = max_connections
        self.max_per_ip = limits.max_connections_per_ip
        self.open = 0
        self.per_ip: Counter[str] = Counter()
        self.refused = 0
        self._ip: dict[Any, str] = {}

    def install(self, server: web.Server) -> None:
        """Wraps the aiohttp server's connection bookkeeping (its two hooks for each connection)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else "?"
            if self.open >= self.max_connections or self.per_ip[ip] >= self.max_per_ip:
                self.refused += 1
                transport.abort()
                return
            self.open += 1
            self.per_ip[ip] += 1
            self._ip[handler] = ip
            made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            ip = self._ip.pop(handler, None)
            if ip is not None:
                self.open -= 1
                self.per_ip[ip] -= 1
                if not self.per_ip[ip]:
                    del self.per_ip[ip]
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign,assignment]


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
    get_logger().warning("file descriptor limit below the configured connections; client connections capped",
                         nofile=soft, max_connections=limits.max_connections, capped_to=allowed)
    return allowed
