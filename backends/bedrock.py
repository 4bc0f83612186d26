"""AWS Bedrock's Converse API (``/model/{id}/converse``, ``/converse-stream``), signed with SigV4, behind
OpenAI's shape.

Requests are signed by botocore's ``SigV4Auth`` (service ``bedrock``); region and credentials come from the
deployment (``aws_region``, ``aws_access_key_id``, …) or botocore's usual chain (``AWS_REGION``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, profiles, instance roles), read at
start-up. A deployment with ``api_key`` uses a Bedrock API key (bearer) instead. ConverseStream answers in
AWS's binary event-stream framing, decoded by botocore's ``EventStreamBuffer``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.eventstream import EventStreamBuffer, ParserError
from botocore.session import Session

from errors import (
    InvalidRequest,
    Unavailable,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
    from_upstream,
)

from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig
from .http import client_timeout, expect_stream, plain_error, post, primed, read_error, read_json
from .pool import SessionPool
from .shape import (
    DONE,
    Choice,
    ChunkWriter,
    Image,
    ToolCall,
    Usage,
    append_turn,
    completion,
    convert_content,
    function_of,
    max_tokens,
    new_id,
    safe_tool_id,
    single_choice,
    stop_list,
    text_of,
    tool_arguments,
)
from .wire.reasoning import MIN_BUDGET, budget_of, in_tool_loop

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# AWS error (x-amzn-ErrorType, or :exception-type in a stream) -> (status, OpenAI type, code).
ERRORS: dict[str, tuple[int, str, str | None]] = {
    "ThrottlingException": (429, "rate_limit_error", "rate_limit_exceeded"),
    "ModelNotReadyException": (429, "server_error", "model_not_ready"),
    "ServiceUnavailableException": (503, "server_error", "overloaded"),
    "InternalServerException": (500, "server_error", None),
    "ModelStreamErrorException": (424, "server_error", "model_error"),
    "ModelErrorException": (424, "server_error", "model_error"),
    "ModelTimeoutException": (408, "timeout", "upstream_timeout"),
    "ValidationException": (400, "invalid_request_error", None),
    "AccessDeniedException": (403, "invalid_request_error", "permission_denied"),
    "UnrecognizedClientException": (403, "invalid_request_error", "invalid_api_key"),
    "ResourceNotFoundException": (404, "invalid_request_error", "not_found"),
    "ServiceQuotaExceededException": (400, "insufficient_quota", "insufficient_quota"),
}
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
EVENT_STREAM = "application/vnd.amazon.eventstream"


class BedrockBackend(Backend):
    def __init__(self, deployment: DeploymentConfig, pool: SessionPool) -> None:
        self.id = deployment.id
        self.deployment = deployment
        self._pool = pool
        self._timeout = client_timeout(deployment)
        self._botocore = Session()
        # AWS_REGION is what AWS's SDKs and Lambda set; botocore itself reads AWS_DEFAULT_REGION and profiles.
        self.region: str | None = (
            deployment.aws_region
            or os.environ.get("AWS_REGION")
            or self._botocore.get_config_variable("region")
        )
        self.base_url = deployment.api_base or f"https://bedrock-runtime.{self.region}.amazonaws.com"
        model = quote(deployment.model, safe="")
        self._urls = {
            stream: f"{self.base_url}/model/{model}/{'converse-stream' if stream else 'converse'}"
            for stream in (False, True)
        }
        self._credentials: Credentials | None = None
        if deployment.aws_access_key_id and deployment.aws_secret_access_key:
            self._credentials = Credentials(
                deployment.aws_access_key_id, deployment.aws_secret_access_key, deployment.aws_session_token
            )

    async def start(self) -> None:
        if self._credentials is None and not self.deployment.api_key:
            # The chain may read files or ask an instance-metadata endpoint: not on the loop.
            self._credentials = await asyncio.to_thread(self._botocore.get_credentials)

    async def _headers(self, url: str, body: bytes, accept: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": accept, **self.deployment.headers}
        if self.deployment.api_key:
            return {**headers, "authorization": f"Bearer {self.deployment.api_key}"}
        if self.region is None:
            raise Unavailable(
                f"Bedrock deployment {self.id} has no AWS region: set aws_region or AWS_REGION."
            )
        if self._credentials is None:
            await self.start()
        credentials = self._credentials
        if credentials is None:
            raise Unavailable(
                f"Bedrock deployment {self.id} found no AWS credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile or a role)."
            )
        frozen: ReadOnlyCredentials
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
        else:
            frozen = credentials.get_frozen_credentials()
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(frozen, "bedrock", self.region).add_auth(request)
        return dict(request.headers.items())

    @asynccontextmanager
    async def send(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        if endpoint is not Endpoint.CHAT:
            raise InvalidRequest(
                f"Bedrock deployments serve chat completions only, not /v1/{endpoint.value}."
            )
        url = self._urls[stream]
        body = orjson.dumps(to_converse(payload, self.deployment.model))
        headers = await self._headers(url, body, EVENT_STREAM if stream else "application/json")
        session = self._pool.get(self.base_url, self.deployment.proxy)
        # encoded=True: the model id's %3A must go out as signed, not normalized back to ':'.
        response = await post(session, yarl.URL(url, encoded=True), body, headers, self._timeout, self.id)
        try:
            if response.status >= 400:
                data, raw, passed = await read_error(response, self.deployment.timeouts.read_s)
                kind = response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0]
                if isinstance(data, dict) and kind:
                    raise error_from(kind, data, response.status, passed, self.id)
                raise plain_error(self.id, response.status, raw, passed)
            if stream:
                expect_stream(response, EVENT_STREAM, self.id)
                yield UpstreamResponse(status=200, chunks=await primed(self._chunks(response), self.id))
            else:
                answer = from_converse(await read_json(response, self.id), self.deployment.model)
                yield UpstreamResponse(status=200, body=orjson.dumps(answer), data=answer)
        finally:
            response.release()

    async def _events(self, response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        buffer = EventStreamBuffer()
        try:
            async for piece in response.content.iter_any():
                buffer.add_data(piece)
                for message in buffer:
                    payload = orjson.loads(message.payload) if message.payload else {}
                    kind = message.headers.get(":message-type")
                    if kind == "event":
                        yield str(message.headers.get(":event-type")), payload
                    elif kind == "exception":
                        name = str(message.headers.get(":exception-type", ""))
                        raise error_from(name[:1].upper() + name[1:], payload, 0, {}, self.id)
                    elif kind == "error":
                        raise UpstreamError(
                            f"upstream {self.id}: {message.headers.get(':error-code')}: "
                            f"{message.headers.get(':error-message')}"
                        )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream {self.id} stalled mid-stream") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(
                f"upstream {self.id} broke off its stream: {type(exc).__name__}"
            ) from exc
        except (ParserError, orjson.JSONDecodeError) as exc:
            raise UpstreamError(f"upstream {self.id} sent a malformed event stream: {exc}") from exc

    async def _chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        writer = ChunkWriter(new_id("chatcmpl-"), self.deployment.model)
        tools: dict[int, int] = {}
        finish: str | None = None
        async for kind, event in self._events(response):
            if kind == "messageStart":
                yield writer.role()
            elif kind == "contentBlockStart":
                start = (event.get("start") or {}).get("toolUse")
                if start:
                    tools[event.get("contentBlockIndex", 0)] = len(tools)
                    yield writer.tool_start(
                        len(tools) - 1, str(start.get("toolUseId")), str(start.get("name"))
                    )
            elif kind == "contentBlockDelta":
                delta = event.get("delta") or {}
                if delta.get("text"):
                    yield writer.text(delta["text"])
                elif isinstance(delta.get("reasoningContent"), dict) and delta["reasoningContent"].get(
                    "text"
                ):
                    yield writer.reasoning(delta["reasoningContent"]["text"])
                elif isinstance(delta.get("toolUse"), dict) and delta["toolUse"].get("input"):
                    tool = tools.get(event.get("contentBlockIndex", 0))
                    if tool is None:
                        raise UpstreamError(
                            f"upstream {self.id} sent tool input for a block it never started"
                        )
                    yield writer.tool_arguments(tool, delta["toolUse"]["input"])
            elif kind == "messageStop":
                finish = FINISH_REASONS.get(str(event.get("stopReason")), "stop")
            elif kind == "metadata":
                yield writer.finish(finish or "stop") + writer.usage(usage_of(event.get("usage"))) + DONE
                return
        if finish is None:
            raise UpstreamConnectionError(f"upstream {self.id} ended its stream before messageStop")
        yield writer.finish(finish) + writer.usage(Usage()) + DONE


def error_from(
    kind: str, data: dict[str, Any], status: int, headers: dict[str, str], backend_id: str
) -> UpstreamError:
    known_status, type_, code = ERRORS.get(
        kind, (status or 502, "server_error" if (status or 502) >= 500 else "invalid_request_error", None)
    )
    message = str(data.get("message") or data.get("Message") or kind)
    return from_upstream(
        UpstreamError(
            f"{kind}: {message}", status=status or known_status, error_type=type_, code=code, headers=headers
        ),
        backend_id,
    )


def usage_of(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    read, written = raw.get("cacheReadInputTokens"), raw.get("cacheWriteInputTokens")
    return Usage(
        prompt_tokens=int(raw.get("inputTokens") or 0) + int(read or 0) + int(written or 0),
        completion_tokens=int(raw.get("outputTokens") or 0),
        cached_tokens=read if read is not None or written is not None else None,
        cache_creation_tokens=written,
    )


def from_converse(data: dict[str, Any], model: str) -> dict[str, Any]:
    """A Converse answer as an OpenAI ``chat.completion``."""
    choice = Choice(finish_reason=FINISH_REASONS.get(str(data.get("stopReason")), "stop"))
    texts, thoughts = [], []
    for block in ((data.get("output") or {}).get("message") or {}).get("content") or ():
        if "text" in block:
            texts.append(block["text"])
        elif isinstance(block.get("reasoningContent"), dict):
            thoughts.append(str((block["reasoningContent"].get("reasoningText") or {}).get("text") or ""))
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            choice.tool_calls.append(
                ToolCall(
                    str(use.get("toolUseId")),
                    str(use.get("name")),
                    orjson.dumps(use.get("input") or {}).decode(),
                )
            )
    choice.text, choice.reasoning = "".join(texts), "".join(thoughts)
    return completion(new_id("chatcmpl-"), model, [choice], usage_of(data.get("usage")))


def to_converse(payload: dict[str, Any], model: str = "") -> dict[str, Any]:
    """An OpenAI chat-completions request as a Converse request (``model``: the Bedrock model id, which decides
    how reasoning is asked for)."""
    single_choice(payload, "Bedrock")
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(payload["messages"]):
        role, content = message.get("role"), message.get("content")
        where = f"messages[{i}].content"
        if role in ("system", "developer"):
            if text_of(content):
                system.append({"text": text_of(content)})
        elif role == "tool":
            result = {
                "toolUseId": safe_tool_id(message.get("tool_call_id")),
                "content": [{"text": text_of(content) or " "}],
            }
            append_turn(messages, "user", "content", [{"toolResult": result}])
        elif role in ("user", "assistant"):
            blocks = _blocks(content, where)
            for j, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                blocks.append(
                    {
                        "toolUse": {
                            "toolUseId": safe_tool_id(call.get("id")),
                            "name": str(function.get("name")),
                            "input": tool_arguments(
                                function.get("arguments"), f"messages[{i}].tool_calls[{j}].function.arguments"
                            ),
                        }
                    }
                )
            append_turn(messages, str(role), "content", blocks)
        else:
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].role': {role!r} is not supported by Bedrock deployments.",
                param=f"messages[{i}].role",
            )
    request: dict[str, Any] = {"messages": messages}
    if system:
        request["system"] = system
    config: dict[str, Any] = {}
    limit = max_tokens(payload)
    if limit:
        config["maxTokens"] = limit
    if isinstance(payload.get("temperature"), (int, float)):
        config["temperature"] = min(float(payload["temperature"]), 1.0)
    if isinstance(payload.get("top_p"), (int, float)):
        config["topP"] = payload["top_p"]
    stop = stop_list(payload.get("stop"))
    if stop:
        config["stopSequences"] = stop
    reasoning = _reasoning(payload.get("reasoning_effort"), config, model, payload["messages"])
    if reasoning:
        request["additionalModelRequestFields"] = reasoning
    if config:
        request["inferenceConfig"] = config
    tools = payload.get("tools")
    history = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
    choice = payload.get("tool_choice")
    if tools and (
        choice != "none" or history
    ):  # Converse has no "none"; it needs the tools to read a history
        request["toolConfig"] = {"tools": [_tool(tool, i) for i, tool in enumerate(tools)]}
        if choice == "required":
            request["toolConfig"]["toolChoice"] = {"any": {}}
        elif isinstance(choice, dict):
            request["toolConfig"]["toolChoice"] = {
                "tool": {"name": (choice.get("function") or {}).get("name")}
            }
        elif choice in (None, "auto"):
            request["toolConfig"]["toolChoice"] = {"auto": {}}
    return request


def _reasoning(
    effort: Any, config: dict[str, Any], model: str, messages: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """``reasoning_effort`` in Bedrock's model-specific fields: Anthropic's models take ``thinking`` with a
    budget below ``maxTokens`` (and the default temperature and top_p, so those are left out); Amazon's Nova
    takes ``reasoningConfig`` with an effort of low, medium or high. Other models get nothing."""
    budget = budget_of(effort)
    if budget is None:
        return None
    if "anthropic." in model or "claude" in model:
        if in_tool_loop(messages):
            return None
        limit = config.setdefault("maxTokens", budget + 4096)
        budget = max(MIN_BUDGET, min(budget, limit - 1))
        if budget >= limit:
            return None
        config.pop("temperature", None)
        config.pop("topP", None)
        return {"thinking": {"type": "enabled", "budget_tokens": budget}}
    if "nova" in model:
        level = "low" if effort in ("minimal", "low") else "medium" if effort == "medium" else "high"
        return {"reasoningConfig": {"type": "enabled", "maxReasoningEffort": level}}
    return None


def _tool(tool: Any, i: int) -> dict[str, Any]:
    function = function_of(tool, i)
    spec: dict[str, Any] = {
        "name": function["name"],
        "inputSchema": {"json": function.get("parameters") or {"type": "object", "properties": {}}},
    }
    if function.get("description"):
        spec["description"] = function["description"]
    return {"toolSpec": spec}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    return convert_content(content, where, "Bedrock", lambda part: {"text": part["text"]}, _image_block)


def _image_block(image: Image, where: str) -> dict[str, Any]:
    image_format = _IMAGE_FORMATS.get(image.media_type or "")
    if image.data is None or image_format is None:
        raise InvalidRequest(
            f"Invalid '{where}': Bedrock takes images inline only, as a data: URL of a PNG, JPEG, "
            "GIF or WebP image.",
            param=where,
        )
    return {"image": {"format": image_format, "source": {"bytes": image.data}}}
