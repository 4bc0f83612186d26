"""One pooled aiohttp client session per upstream origin, shared by all deployments on it."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp


class SessionPool:
    def __init__(self, *, limit_per_origin: int = 1000) -> None:
        self._limit = limit_per_origin
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def get(self, base_url: str) -> aiohttp.ClientSession:
        parts = urlsplit(base_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        session = self._sessions.get(origin)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300)
            # No session-wide timeout: each request carries its deployment's timeouts.
            session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                            auto_decompress=True, raise_for_status=False)
            self._sessions[origin] = session
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
