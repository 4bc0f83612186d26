"""One pooled aiohttp client session per upstream origin (and egress proxy), shared by all deployments on it.

Egress: with no ``proxy`` on a deployment, ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` from the environment
apply, read once per origin when its session is made (aiohttp's own rules: ``get_env_proxy_for_url``); a
deployment's ``proxy: http://host:port`` overrides them, ``proxy: none`` goes direct whatever the environment
says. Sessions never use aiohttp's ``trust_env``: it looks up the proxy and ``~/.netrc`` again on every request,
each in a worker thread (two thread hops per upstream call, about 40% of the gateway's CPU per request), and
would send a host's ``.netrc`` credentials upstream."""

from __future__ import annotations

from contextlib import suppress
from urllib.parse import urlsplit

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL


class SessionPool:
    def __init__(self, *, limit_per_origin: int = 1000) -> None:
        self._limit = limit_per_origin
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def get(self, base_url: str, proxy: str | None = None) -> aiohttp.ClientSession:
        parts = urlsplit(base_url)
        origin = f"{parts.scheme}://{parts.netloc} via {proxy or 'env'}"
        session = self._sessions.get(origin)
        if session is None or session.closed:
            proxy_url: URL | str | None = None if proxy in (None, "none") else proxy
            if proxy is None:
                with suppress(LookupError):  # no proxy in the environment for it, or NO_PROXY names it
                    proxy_url, auth = get_env_proxy_for_url(URL(base_url))
                    if auth is not None:  # .netrc's entry for the proxy's host: its URL carries it to aiohttp
                        proxy_url = proxy_url.with_user(auth.login).with_password(auth.password)
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300)
            # No session-wide timeout: each request carries its deployment's timeouts.
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
                raise_for_status=False,
                proxy=proxy_url,  # its credentials, if any, go to the proxy alone (Proxy-Authorization)
            )
            self._sessions[origin] = session
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
