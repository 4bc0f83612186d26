"""One pooled aiohttp client session per upstream origin (and egress proxy), shared by all deployments on it.

Egress: with no ``proxy`` on a deployment, ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` from the environment
apply (aiohttp's ``trust_env``); a deployment's ``proxy: http://host:port`` overrides them, ``proxy: none``
goes direct whatever the environment says."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp


class SessionPool:
    def __init__(self, *, limit_per_origin: int = 1000) -> None:
        self._limit = limit_per_origin
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def get(self, base_url: str, proxy: str | None = None) -> aiohttp.ClientSession:
        parts = urlsplit(base_url)
        origin = f"{parts.scheme}://{parts.netloc} via {proxy or 'env'}"
        session = self._sessions.get(origin)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300)
            # No session-wide timeout: each request carries its deployment's timeouts.
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
                raise_for_status=False,
                trust_env=proxy is None,
                proxy=None if proxy in (None, "none") else proxy,
            )
            self._sessions[origin] = session
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
