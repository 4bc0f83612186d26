"""OpenAI's wire format: OpenAI, Azure OpenAI, vLLM, Ollama, Groq, Together, Mistral, OpenRouter, …"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig
from .errors import UpstreamConnectionError, UpstreamError, UpstreamTimeout
from .pool import SessionPool

_PASSED_ERROR_HEADERS = ("retry-after", "retry-after-ms")
_MAX_ERROR_BODY = 64 * 1024


class OpenAIBackend(Backend):
    def __init__(self, deployment: DeploymentConfig, pool: SessionPool) -> None:
        self.id = deployment.id
        self.deployment = deployment
        self._pool = pool
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=deployment.timeouts.connect_s,
                                              sock_read=deployment.timeouts.read_s)
        headers = {"content-type": "application/json", **deployment.headers}
        if deployment.api_key:
            if deployment.provider == "azure":
                headers["api-key"] = deployment.api_key
            else:
                headers["authorization"] = f"Bearer {deployment.api_key}"
        self._headers = headers
        self._urls = {endpoint: self._url(endpoint) for endpoint in Endpoint}

    def _url(self, endpoint: Endpoint) -> str:
        base = self.deployment.base_url
        if self.deployment.provider == "azure":
            return (f"{base}/openai/deployments/{self.deployment.model}/{endpoint.value}"
                    f"?api-version={self.deployment.api_version}")
        return f"{base}/{endpoint.value}"

    @asynccontextmanager
    async def send(self, endpoint: Endpoint, payload: dict[str, Any], *,
                   stream: bool) -> AsyncIterator[UpstreamResponse]:
        payload["model"] = self.deployment.model
        if stream and self.deployment.stream_usage:
            # Usage on every stream, so that tokens are counted; the pipeline drops it if the client did not ask.
            options = payload.get("stream_options")
            payload["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else \
                {"include_usage": True}
        session = self._pool.get(self.deployment.base_url)
        try:
            response = await session.post(self._urls[endpoint], data=orjson.dumps(payload),
                                          headers=self._headers, timeout=self._timeout)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream {self.id} timed out before answering") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"upstream {self.id} unreachable: {type(exc).__name__}") from exc
        try:
            if response.status >= 400:
                raise await self._error(response)
            if stream:
                if not response.content_type.startswith("text/event-stream"):
                    raise UpstreamError(f"upstream {self.id} answered a stream request with "
                                        f"{response.content_type or 'no content type'}")
                yield UpstreamResponse(status=response.status, chunks=self._relay(response))
            else:
                body = await self._read(response)
                try:
                    data = orjson.loads(body)
                except orjson.JSONDecodeError:
                    data = None
                if not isinstance(data, dict):
                    raise UpstreamError(f"upstream {self.id} returned a body that is not a JSON object")
                if "error" in data and "choices" not in data and "data" not in data:
                    raise _error_from_body(data, 502, self.id)
                yield UpstreamResponse(status=response.status, body=body, data=data)
        finally:
            response.release()

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        try:
            return await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream {self.id} timed out while answering") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"upstream {self.id} broke off its answer: "
                                          f"{type(exc).__name__}") from exc

    async def _relay(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream {self.id} stalled mid-stream") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"upstream {self.id} broke off its stream: "
                                          f"{type(exc).__name__}") from exc

    async def _error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        headers = {h: response.headers[h] for h in _PASSED_ERROR_HEADERS if h in response.headers}
        try:
            raw = await asyncio.wait_for(response.content.read(_MAX_ERROR_BODY), self.deployment.timeouts.read_s)
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            error = _error_from_body(data, response.status, self.id)
            error.headers = headers
            return error
        text = raw[:200].decode("utf-8", "replace").strip()
        return UpstreamError(f"upstream {self.id} returned HTTP {response.status}" + (f": {text}" if text else ""),
                             status=response.status, headers=headers)


def _error_from_body(data: dict[str, Any], status: int, deployment_id: str) -> UpstreamError:
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return UpstreamError(str(message) if message else f"upstream {deployment_id} returned HTTP {status}",
                             status=status, error_type=_str_or_none(error.get("type")),
                             code=_str_or_none(error.get("code")), param=_str_or_none(error.get("param")))
    if isinstance(error, str):
        return UpstreamError(error, status=status)
    return UpstreamError(f"upstream {deployment_id} returned HTTP {status}", status=status)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
