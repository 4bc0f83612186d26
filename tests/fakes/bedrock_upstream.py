"""A fake AWS Bedrock Runtime (Converse and ConverseStream) on loopback, written from AWS's API reference.

``POST /model/{modelId}/converse`` answers JSON; ``/converse-stream`` answers AWS's binary event stream
(``application/vnd.amazon.eventstream``: prelude, headers, payload, CRC32s), encoded here by hand so that
botocore's decoder is the judge. Every request must carry a SigV4 ``Authorization`` header for service
``bedrock``, which is recomputed with botocore from the known secret (403 InvalidSignatureException
otherwise); a Bedrock API key (``Authorization: Bearer``) equal to the fake's key stands in for it.
Errors: status, ``x-amzn-ErrorType`` and ``{"message"}``. Model names choose failures: ``error-429``
(ThrottlingException), ``error-503`` (ServiceUnavailableException), ``error-400`` (ValidationException),
``stream-error`` (a throttlingException event mid-stream), ``cut-stream`` (half a frame, then the connection
drops), ``early-error`` (a 200 stream whose first message is a throttlingException).
"""

from __future__ import annotations

import binascii
import re
import struct
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .openai_upstream import STATE, FakeState, Seen
from .scenario import Answer, Gist, answer, error_status, split_arguments

ACCESS_KEY, SECRET_KEY, REGION = "AKIDFAKEGATEWAYTEST", "fake-secret-key/for+tests", "us-east-1"
CACHE_READ, CACHE_WRITE = 3, 2
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<headers>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
_ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_STOP = {"end": "end_turn", "tool": "tool_use", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence"}


@dataclass
class Aws:
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    signatures_checked: int = 0


BEDROCK = web.AppKey("bedrock", Aws)


def error(status: int, kind: str, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"message": message}),
        status=status,
        content_type="application/json",
        headers={
            "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "x-amzn-RequestId": str(uuid.uuid4()),
        },
    )


def check_signature(request: web.Request, body: bytes, aws: Aws) -> str | None:
    """None when the SigV4 signature is right; else why not."""
    match = _AUTH.match(request.headers.get("Authorization", ""))
    if match is None:
        return "Authorization header is not a SigV4 signature"
    if match["key"] != aws.access_key:
        return "The security token included in the request is invalid."
    if match["service"] != "bedrock" or match["region"] != aws.region:
        return (
            f"Credential should be scoped to a valid region and service bedrock, not {match['region']}/"
            f"{match['service']}."
        )
    timestamp = request.headers.get("X-Amz-Date", "")
    signed = match["headers"].split(";")
    if "host" not in signed or "x-amz-date" not in signed or not timestamp.startswith(match["date"]):
        return "SignedHeaders must include host and x-amz-date"
    url = f"http://{request.headers['Host']}{request.raw_path}"
    replay = AWSRequest(
        method=request.method, url=url, data=body, headers={h: request.headers[h] for h in signed}
    )
    replay.context["timestamp"] = timestamp
    signer = SigV4Auth(Credentials(aws.access_key, aws.secret_key), "bedrock", aws.region)
    expected = signer.signature(signer.string_to_sign(replay, signer.canonical_request(replay)), replay)
    if expected != match["signature"]:
        return (
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )
    aws.signatures_checked += 1
    return None


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: total and header lengths, prelude CRC, string headers, payload, message CRC."""
    raw_headers = b""
    for name, value in headers.items():
        encoded = value.encode()
        raw_headers += (
            bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(encoded)) + encoded
        )
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + raw_headers + payload
    return message + struct.pack(">I", binascii.crc32(message))


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return encode_message(
        {":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
        orjson.dumps(payload),
    )


def exception(kind: str, message: str) -> bytes:
    return encode_message(
        {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
        orjson.dumps({"message": message}),
    )


class BadRequest(Exception):
    pass


def gist(body: dict[str, Any]) -> Gist:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("A conversation must start with a user message.")
    config = body.get("inferenceConfig") or {}
    out = Gist()
    used: set[str] = set()
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Member must satisfy enum value set: [user, assistant]")
        last = i == len(messages) - 1
        if last:
            out = Gist()
        for block in message.get("content") or ():
            if "text" in block:
                if last:
                    out.text += block["text"]
            elif "image" in block:
                image = block["image"]
                if image.get("format") not in ("png", "jpeg", "gif", "webp") or "bytes" not in image.get(
                    "source", {}
                ):
                    raise BadRequest(f"messages.{i}.content: invalid image block")
                out.images.append(f"image/{image['format']}")
            elif "toolUse" in block and message["role"] == "assistant":
                used.add(block["toolUse"]["toolUseId"])
            elif "toolResult" in block and message["role"] == "user":
                result = block["toolResult"]
                if result.get("toolUseId") not in used:
                    raise BadRequest("The toolUseId in toolResult does not match a toolUse block.")
                out.tool_results.append("".join(c.get("text", "") for c in result.get("content") or ()))
            else:
                raise BadRequest(f"messages.{i}.content: unknown block {sorted(block)}")
    if used and not body.get("toolConfig"):
        raise BadRequest(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )
    out.stop = list(config.get("stopSequences") or [])
    out.max_tokens = config.get("maxTokens")
    tools = (body.get("toolConfig") or {}).get("tools") or []
    if tools and not out.tool_results:
        out.tool_name = tools[0]["toolSpec"]["name"]
    return out


def _usage(body: dict[str, Any], plan: Answer) -> dict[str, int]:
    prompt = len(orjson.dumps(body["messages"])) // 4 + 1
    return {
        "inputTokens": prompt,
        "outputTokens": plan.output_tokens,
        "totalTokens": prompt + plan.output_tokens + CACHE_READ + CACHE_WRITE,
        "cacheReadInputTokens": CACHE_READ,
        "cacheWriteInputTokens": CACHE_WRITE,
    }


REASONING_SIGNATURE = "sig-bedrock-fake"


def thought(body: dict[str, Any]) -> str | None:
    """The reasoning text of a request that asked Claude on Bedrock to think; BadRequest as Bedrock refuses."""
    thinking = (body.get("additionalModelRequestFields") or {}).get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget, config = thinking.get("budget_tokens"), body.get("inferenceConfig") or {}
    if not isinstance(budget, int) or budget < 1024:
        raise BadRequest("thinking.budget_tokens: Input should be greater than or equal to 1024")
    if not isinstance(config.get("maxTokens"), int) or config["maxTokens"] <= budget:
        raise BadRequest("`max_tokens` must be greater than `thinking.budget_tokens`")
    if "temperature" in config or "topP" in config:
        raise BadRequest("temperature and top_p may not be set while thinking is enabled")
    return f"Thinking (budget {budget})."


def converse(body: dict[str, Any], plan: Answer) -> dict[str, Any]:
    reasoning = thought(body)
    content: list[dict[str, Any]] = (
        [{"reasoningContent": {"reasoningText": {"text": reasoning, "signature": REASONING_SIGNATURE}}}]
        if reasoning
        else []
    )
    content += [{"text": plan.text}] if plan.words else []
    content += [
        {"toolUse": {"toolUseId": f"tooluse_fake{i}", "name": name, "input": arguments}}
        for i, (name, arguments) in enumerate(plan.calls)
    ]
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": _STOP[plan.stop],
        "usage": _usage(body, plan),
        "metrics": {"latencyMs": 5},
    }


def stream_events(body: dict[str, Any], plan: Answer, *, fail: bool = False) -> list[bytes]:
    events = [event("messageStart", {"role": "assistant"})]
    index = 0
    reasoning = thought(body)
    if reasoning:
        for delta in ({"text": reasoning}, {"signature": REASONING_SIGNATURE}):
            events.append(
                event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": delta}})
            )
        events.append(event("contentBlockStop", {"contentBlockIndex": 0}))
        index = 1
    if plan.words:
        for piece in plan.pieces():
            events.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
            if fail:
                return [*events, exception("throttlingException", "Too many requests, please wait.")]
        events.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    for i, (name, arguments) in enumerate(plan.calls):
        events.append(
            event(
                "contentBlockStart",
                {
                    "contentBlockIndex": index,
                    "start": {"toolUse": {"toolUseId": f"tooluse_fake{i}", "name": name}},
                },
            )
        )
        for fragment in split_arguments(orjson.dumps(arguments).decode()):
            events.append(
                event(
                    "contentBlockDelta",
                    {"contentBlockIndex": index, "delta": {"toolUse": {"input": fragment}}},
                )
            )
        events.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    events.append(event("messageStop", {"stopReason": _STOP[plan.stop]}))
    events.append(event("metadata", {"usage": _usage(body, plan), "metrics": {"latencyMs": 5}}))
    return events


async def _converse(request: web.Request) -> web.StreamResponse:
    state, aws = request.app[STATE], request.app[BEDROCK]
    raw = await request.read()
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
    # Bedrock API keys (bearer tokens) stand in for a signature.
    problem = (
        None if state.api_key is not None and bearer == state.api_key else check_signature(request, raw, aws)
    )
    if problem is not None:
        return error(
            403,
            "InvalidSignatureException" if "signature" in problem else "UnrecognizedClientException",
            problem,
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error(400, "SerializationException", "Could not parse the request body")
    if state.record:
        state.requests.append(Seen(request.path, dict(request.query), dict(request.headers), body))
    model = request.match_info["model"]
    status = error_status(model)
    if status is not None:
        return error(status, _ERRORS.get(status, "InternalServerException"), f"fake error {status}")
    try:
        plan = answer(gist(body))
        thought(body)
    except BadRequest as exc:
        return error(400, "ValidationException", str(exc))
    if request.match_info["action"] == "converse":
        return web.Response(body=orjson.dumps(converse(body, plan)), content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
    await response.prepare(request)
    events = stream_events(body, plan, fail=model == "stream-error")
    if model == "early-error":  # the stream is accepted (200), then fails before messageStart
        events = [exception("throttlingException", "Too many requests, please wait.")]
    for i, chunk in enumerate(events):
        if model == "cut-stream" and i == 2:
            await response.write(chunk[:7])  # half a frame, then the connection drops
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(chunk)
    await response.write_eof()
    state.completed_streams += 1
    return response


def build_app(state: FakeState | None = None, aws: Aws | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = state or FakeState()
    app[BEDROCK] = aws or Aws()
    app.router.add_post(r"/model/{model}/{action:converse|converse-stream}", _converse)
    return app
