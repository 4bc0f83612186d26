"""HTTP plumbing shared by the native-format adapters: one POST with the gateway's error mapping,
bodies read under the deployment's timeouts, and an SSE reader."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import yarl

from errors import UpstreamConnectionError, UpstreamError, UpstreamTimeout, from_upstream

from . import spans, sse
from .config import DeploymentConfig

PASSED_ERROR_HEADERS = ("retry-after", "retry-after-ms")
MAX_ERROR_BODY = 64 * 1024


def client_timeout(deployment: DeploymentConfig) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None, sock_connect=deployment.timeouts.connect_s, sock_read=deployment.timeouts.read_s
    )


async def post(
    session: aiohttp.ClientSession,
    url: str | yarl.URL,
    body: bytes,
    headers: dict[str, str],
    limits: aiohttp.ClientTimeout,
    backend_id: str,
) -> aiohttp.ClientResponse:
    if (parent := spans.traceparent()) is not None:
        headers = {**headers, "traceparent": parent}
        if (state := spans.tracestate()) is not None:
            headers["tracestate"] = state
    try:
        return await session.post(url, data=body, headers=headers, timeout=limits)
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"upstream {backend_id} timed out before answering") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectionError(f"upstream {backend_id} unreachable: {type(exc).__name__}") from exc


async def read_json(response: aiohttp.ClientResponse, backend_id: str) -> dict[str, Any]:
    return (await read_body(response, backend_id))[1]


async def read_body(response: aiohttp.ClientResponse, backend_id: str) -> tuple[bytes, dict[str, Any]]:
    """A whole answer's raw bytes and its JSON object."""
    try:
        raw = await response.read()
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"upstream {backend_id} timed out while answering") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectionError(
            f"upstream {backend_id} broke off its answer: {type(exc).__name__}"
        ) from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise UpstreamError(f"upstream {backend_id} returned a body that is not a JSON object")
    return raw, data


async def read_error(response: aiohttp.ClientResponse, read_s: float) -> tuple[Any, bytes, dict[str, str]]:
    """An error answer's parsed JSON (None if not JSON), raw bytes and the headers passed to the client."""
    headers = {h: response.headers[h] for h in PASSED_ERROR_HEADERS if h in response.headers}
    try:
        raw = await asyncio.wait_for(response.content.read(MAX_ERROR_BODY), read_s)
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    return data, raw, headers


def plain_error(backend_id: str, status: int, raw: bytes, headers: dict[str, str]) -> UpstreamError:
    text = raw[:200].decode("utf-8", "replace").strip()
    return from_upstream(
        UpstreamError(
            f"upstream {backend_id} returned HTTP {status}" + (f": {text}" if text else ""),
            status=status,
            headers=headers,
        ),
        backend_id,
    )


def expect_stream(response: aiohttp.ClientResponse, content_type: str, backend_id: str) -> None:
    if not response.content_type.startswith(content_type):
        raise UpstreamError(
            f"upstream {backend_id} answered a stream request with "
            f"{response.content_type or 'no content type'}"
        )


async def sse_events(response: aiohttp.ClientResponse, backend_id: str) -> AsyncIterator[sse.Event]:
    """The server-sent events of a stream, each as soon as it is whole, whatever its line ends."""
    decoder = sse.Decoder()
    try:
        async for chunk in response.content.iter_any():
            for event in decoder.feed(chunk):
                yield event
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"upstream {backend_id} stalled mid-stream") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectionError(
            f"upstream {backend_id} broke off its stream: {type(exc).__name__}"
        ) from exc
    for event in decoder.close():
        yield event


def stream_json(data: bytes, backend_id: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"upstream {backend_id} sent a stream event that is not JSON") from exc
    if not isinstance(value, dict):
        raise UpstreamError(f"upstream {backend_id} sent a stream event that is not a JSON object")
    return value


async def primed(chunks: AsyncIterator[bytes], backend_id: str) -> AsyncIterator[bytes]:
    """The stream with its first piece already read: a provider that fails at once (Anthropic's error event
    right after its 200, a Bedrock exception message) fails here, before the client's headers are sent, so
    the client gets the real status and the resilience layer can retry it like any other error."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise UpstreamError(f"upstream {backend_id} answered an empty stream") from None

    async def relay() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return relay()
