"""OpenAI's wire format: OpenAI, Azure OpenAI, vLLM, Ollama, Groq, Together, Mistral, OpenRouter, …"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from errors import InvalidRequest, UpstreamConnectionError, UpstreamError, UpstreamTimeout, from_upstream

from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig
from .http import client_timeout, expect_stream, plain_error, post, read_body, read_error
from .pool import SessionPool

AZURE_RESPONSES_API_VERSION = "2025-04-01-preview"  # date-ok: an api-version of Azure's Responses API


class OpenAIBackend(Backend):
    def __init__(self, deployment: DeploymentConfig, pool: SessionPool) -> None:
        self.id = deployment.id
        self.deployment = deployment
        self._pool = pool
        self._timeout = client_timeout(deployment)
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
        if self.deployment.provider == "azure" and endpoint is Endpoint.RESPONSES:
            # Azure serves the Responses API per resource (the deployment is the body's model), from this
            # api-version on: an older one configured for chat is raised to it.
            version = max(self.deployment.api_version, AZURE_RESPONSES_API_VERSION)
            return f"{base}/openai/responses?api-version={version}"
        if self.deployment.provider == "azure":
            return (
                f"{base}/openai/deployments/{self.deployment.model}/{endpoint.value}"
                f"?api-version={self.deployment.api_version}"
            )
        return f"{base}/{endpoint.value}"

    @asynccontextmanager
    async def send(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        if endpoint in (Endpoint.MESSAGES, Endpoint.COUNT_TOKENS):
            raise InvalidRequest(f"OpenAI-format deployments do not serve /v1/{endpoint.value} natively.")
        payload["model"] = self.deployment.model
        if stream and self.deployment.stream_usage and endpoint is not Endpoint.RESPONSES:
            # Usage on every stream, so that tokens are counted; the pipeline drops it if the client did not ask.
            options = payload.get("stream_options")
            payload["stream_options"] = (
                {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
            )
        session = self._pool.get(self.deployment.base_url, self.deployment.proxy)
        response = await post(
            session, self._urls[endpoint], orjson.dumps(payload), self._headers, self._timeout, self.id
        )
        try:
            if response.status >= 400:
                raise await self._error(response)
            if stream:
                expect_stream(response, "text/event-stream", self.id)
                yield UpstreamResponse(status=response.status, chunks=self._relay(response))
            else:
                body, data = await read_body(response, self.id)
                if (
                    data.get("error")
                    and "choices" not in data
                    and "data" not in data
                    and "output" not in data
                ):
                    raise _error_from_body(data, 502, self.id)
                yield UpstreamResponse(status=response.status, body=body, data=data)
        finally:
            response.release()

    async def _relay(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream {self.id} stalled mid-stream") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(
                f"upstream {self.id} broke off its stream: {type(exc).__name__}"
            ) from exc

    async def _error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        data, raw, headers = await read_error(response, self.deployment.timeouts.read_s)
        if isinstance(data, dict):
            error = _error_from_body(data, response.status, self.id)
            error.headers = headers
            return from_upstream(error, self.id)
        return plain_error(self.id, response.status, raw, headers)


def _error_from_body(data: dict[str, Any], status: int, deployment_id: str) -> UpstreamError:
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return UpstreamError(
            str(message) if message else f"upstream {deployment_id} returned HTTP {status}",
            status=status,
            error_type=_str_or_none(error.get("type")),
            code=_str_or_none(error.get("code")),
            param=_str_or_none(error.get("param")),
        )
    if isinstance(error, str):
        return UpstreamError(error, status=status)
    return UpstreamError(f"upstream {deployment_id} returned HTTP {status}", status=status)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
