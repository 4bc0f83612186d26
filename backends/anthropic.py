"""Anthropic's Messages API (``POST /v1/messages``, ``x-api-key``, ``anthropic-version``) as a backend.

Chat requests are translated both ways by ``wire.anthropic``; ``Endpoint.MESSAGES`` and
``Endpoint.COUNT_TOKENS`` carry an Anthropic-shaped request natively (``/v1/messages`` in front of an
Anthropic deployment): only the model and the credentials change, and the answer (or stream) comes back as
Anthropic sent it. The client's ``anthropic-beta`` header is passed on there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from errors import InvalidRequest, UpstreamConnectionError

from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig
from .http import (
    client_timeout,
    expect_stream,
    plain_error,
    post,
    primed,
    read_body,
    read_error,
    read_json,
    sse_events,
    stream_json,
)
from .pool import SessionPool
from .sse import encode
from .wire.anthropic import BETAS, ERROR_STATUS, ChatChunks, error_from, from_anthropic, to_anthropic

NATIVE = (Endpoint.MESSAGES, Endpoint.COUNT_TOKENS)


class AnthropicBackend(Backend):
    def __init__(self, deployment: DeploymentConfig, pool: SessionPool) -> None:
        self.id = deployment.id
        self.deployment = deployment
        self._pool = pool
        self._timeout = client_timeout(deployment)
        self._url = f"{deployment.base_url}/messages"
        self._headers = {
            "content-type": "application/json",
            "anthropic-version": deployment.anthropic_version,
            **deployment.headers,
        }
        if deployment.api_key:
            self._headers["x-api-key"] = deployment.api_key

    @asynccontextmanager
    async def send(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        if endpoint in NATIVE:
            async with self._native(endpoint, payload, stream=stream) as native:
                yield native
            return
        if endpoint is not Endpoint.CHAT:
            raise InvalidRequest(
                f"Anthropic deployments serve chat completions only, not /v1/{endpoint.value}."
            )
        request = to_anthropic(payload, self.deployment.model, self.deployment.default_max_tokens)
        if stream:
            request["stream"] = True
        session = self._pool.get(self.deployment.base_url, self.deployment.proxy)
        response = await post(
            session, self._url, orjson.dumps(request), self._headers, self._timeout, self.id
        )
        try:
            if response.status >= 400:
                raise await self._error(response)
            if stream:
                expect_stream(response, "text/event-stream", self.id)
                yield UpstreamResponse(status=200, chunks=await primed(self._chunks(response), self.id))
            else:
                data = await read_json(response, self.id)
                if data.get("type") == "error":
                    raise error_from(data, 502, {}, self.id)
                answer = from_anthropic(data)
                yield UpstreamResponse(status=200, body=orjson.dumps(answer), data=answer)
        finally:
            response.release()

    @asynccontextmanager
    async def _native(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        """An Anthropic-shaped request sent as it is: the answer's bytes (or stream) come back unchanged."""
        request = dict(payload)
        betas = request.pop(BETAS, None)
        request["model"] = self.deployment.model
        headers = (
            {**self._headers, "anthropic-beta": betas} if isinstance(betas, str) and betas else self._headers
        )
        url = self._url + ("/count_tokens" if endpoint is Endpoint.COUNT_TOKENS else "")
        session = self._pool.get(self.deployment.base_url, self.deployment.proxy)
        response = await post(session, url, orjson.dumps(request), headers, self._timeout, self.id)
        try:
            if response.status >= 400:
                raise await self._error(response)
            if stream:
                expect_stream(response, "text/event-stream", self.id)
                yield UpstreamResponse(status=200, chunks=await primed(self._relay(response), self.id))
            else:
                body, data = await read_body(response, self.id)
                if data.get("type") == "error":
                    raise error_from(data, 502, {}, self.id)
                yield UpstreamResponse(status=200, body=body, data=data)
        finally:
            response.release()

    async def _error(self, response: aiohttp.ClientResponse) -> Exception:
        data, raw, headers = await read_error(response, self.deployment.timeouts.read_s)
        return (
            error_from(data, response.status, headers, self.id)
            if isinstance(data, dict)
            else plain_error(self.id, response.status, raw, headers)
        )

    async def _relay(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The native stream's events as they come; an ``error`` event fails it (before the first byte went
        out, so that it can be retried) and a stream that ends before message_stop is a broken one."""
        async for raw in sse_events(response, self.id):
            name, data = raw.event, raw.data
            if name == "error" or data.startswith(b'{"type":"error"'):
                event = stream_json(data, self.id)
                raise error_from(
                    event, ERROR_STATUS.get(str((event.get("error") or {}).get("type")), 502), {}, self.id
                )
            yield encode(data, event=name)
            if name == "message_stop":
                return
        raise UpstreamConnectionError(f"upstream {self.id} ended its stream before message_stop")

    async def _chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        chunks = ChatChunks(self.deployment.model, self.id)
        async for raw in sse_events(response, self.id):
            event = stream_json(raw.data, self.id)
            out = chunks.event(event.get("type", raw.event), event)
            if out:
                yield out
            if chunks.done:
                return
        raise UpstreamConnectionError(f"upstream {self.id} ended its stream before message_stop")
