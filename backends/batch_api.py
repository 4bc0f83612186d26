"""A provider's own batch API, for a batch the gateway forwards (``batch.mode: upstream``):
OpenAI's Files and Batch APIs (``/files``, ``/batches``, ``Authorization: Bearer``), the same APIs on Azure
OpenAI (``/openai/files``, ``/openai/batches``, ``?api-version=``, ``api-key``) and Anthropic's Message
Batches API (``/messages/batches``, ``x-api-key``, ``anthropic-version``), with the deployment's key, base and
headers. Each call is one HTTP request; an error answer is an ``UpstreamError`` carrying its status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from errors import UpstreamConnectionError, UpstreamError, UpstreamTimeout

from .config import DeploymentConfig
from .http import client_timeout, plain_error, read_error
from .pool import SessionPool

CHUNK = 1024 * 1024


class BatchAPI:
    """The HTTP part both providers share: a JSON call, a streamed download, a batch's retrieve and cancel."""

    BATCHES = "batches"  # the batches' path below the deployment's base

    def __init__(self, deployment: DeploymentConfig, pool: SessionPool, headers: dict[str, str]) -> None:
        self.deployment = deployment
        self._pool = pool
        self._headers = {**headers, **deployment.headers}
        self._timeout = client_timeout(deployment)
        self.id = deployment.id

    def _url(self, path: str) -> str:
        return f"{self.deployment.base_url}/{path}"

    async def _call(self, method: str, path: str, body: Any = None, data: Any = None) -> dict[str, Any]:
        async with self._open(method, path, body, data) as response:
            try:
                found = orjson.loads(await response.read())
            except orjson.JSONDecodeError:
                found = None
            if not isinstance(found, dict):
                raise UpstreamError(f"upstream {self.id} returned a body that is not a JSON object")
            return found

    def _open(self, method: str, path: str, body: Any = None, data: Any = None) -> _Opened:
        headers = dict(self._headers)
        if body is not None:
            data = orjson.dumps(body)
            headers["content-type"] = "application/json"
        session = self._pool.get(self.deployment.base_url, self.deployment.proxy)
        return _Opened(
            self, session.request(method, self._url(path), data=data, headers=headers, timeout=self._timeout)
        )

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._call("GET", f"{self.BATCHES}/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._call("POST", f"{self.BATCHES}/{batch_id}/cancel")

    async def download(self, path: str) -> AsyncIterator[bytes]:
        """A file's bytes, in chunks as they come."""
        async with self._open("GET", path) as response:
            async for chunk in response.content.iter_chunked(CHUNK):
                yield chunk


class _Opened:
    """One request's response, its error status raised as the gateway's error."""

    def __init__(self, api: BatchAPI, pending: Any) -> None:
        self._api, self._pending = api, pending
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            self._response = response = await self._pending
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream {self._api.id} timed out before answering") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(
                f"upstream {self._api.id} unreachable: {type(exc).__name__}"
            ) from exc
        if response.status >= 400:
            data, raw, headers = await read_error(response, self._api.deployment.timeouts.read_s)
            response.release()
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                raise UpstreamError(
                    f"upstream {self._api.id}: {error['message']}", status=response.status, headers=headers
                )
            raise plain_error(self._api.id, response.status, raw, headers)
        return response

    async def __aexit__(self, *exc: object) -> None:
        if self._response is not None:
            self._response.release()


class OpenAIBatchAPI(BatchAPI):
    """OpenAI's Files and Batch APIs."""

    def __init__(self, deployment: DeploymentConfig, pool: SessionPool) -> None:
        super().__init__(
            deployment, pool, {"authorization": f"Bearer {deployment.api_key}"} if deployment.api_key else {}
        )

    async def upload(self, filename: str, chunks: AsyncIterator[bytes]) -> str:
        """A ``purpose: batch`` file from ``chunks`` (streamed, never whole in memory); its id."""
        form = aiohttp.MultipartWriter("form-data")
        form.append("batch").set_content_disposition("form-data", name="purpose")
        part = form.append_payload(aiohttp.AsyncIterablePayload(chunks, content_type="application/jsonl"))
        part.set_content_disposition("form-data", name="file", filename=filename)
        return str((await self._call("POST", "files", data=form))["id"])

    async def create(
        self, input_file_id: str, endpoint: str, metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        return await self._call(
            "POST",
            "batches",
            {
                "input_file_id": input_file_id,
                "endpoint": endpoint,
                "completion_window": "24h",
                "metadata": metadata,
            },
        )

    def content(self, file_id: str) -> AsyncIterator[bytes]:
        return self.download(f"files/{file_id}/content")


class AzureBatchAPI(OpenAIBatchAPI):
    """Azure OpenAI's Files and Batch APIs: OpenAI's, per resource under ``/openai/`` with an ``api-version``
    (the batch API's is 2024-10-21 on) and the ``api-key`` header. Its lines and its batch name the endpoint
    without ``/v1`` (``/chat/completions``), and a line's ``model`` is a global-batch deployment's name."""

    API_VERSION = "2024-10-21"

    def __init__(self, deployment: DeploymentConfig, pool: SessionPool) -> None:
        BatchAPI.__init__(
            self, deployment, pool, {"api-key": deployment.api_key} if deployment.api_key else {}
        )
        self._version = max(deployment.api_version, self.API_VERSION)

    def _url(self, path: str) -> str:
        return f"{self.deployment.base_url}/openai/{path}?api-version={self._version}"

    @staticmethod
    def endpoint(endpoint: str) -> str:
        """A gateway endpoint (``/v1/chat/completions``) as Azure's batch lines name it."""
        return endpoint.removeprefix("/v1")

    async def create(
        self, input_file_id: str, endpoint: str, metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        return await super().create(input_file_id, self.endpoint(endpoint), metadata)


class AnthropicBatchAPI(BatchAPI):
    """Anthropic's Message Batches API."""

    BATCHES = "messages/batches"

    def __init__(self, deployment: DeploymentConfig, pool: SessionPool) -> None:
        headers = {"anthropic-version": deployment.anthropic_version}
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
        super().__init__(deployment, pool, headers)

    async def create(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._call("POST", self.BATCHES, {"requests": requests})

    def results(self, batch_id: str) -> AsyncIterator[bytes]:
        return self.download(f"messages/batches/{batch_id}/results")
