"""Anthropic, Gemini and Bedrock behind the gateway, driven by the official openai SDK: plain and streamed
answers, a weather tool round trip, parallel tool calls while streaming, images, each error class, and the
same text, tool calls and usage whether an answer is streamed or not."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import KEY, UPSTREAM_KEY
from tests.fakes import bedrock_upstream
from tests.fakes.providers import PROVIDERS, logged
from tests.fakes.scenario import TOOL_CALL_TOKENS
from tests.openapi import validate

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
IMAGE_PART = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
CACHED = {"anthropic": 3, "gemini": 3, "bedrock": 3}
pytestmark = pytest.mark.parametrize("provider", PROVIDERS)


@pytest.fixture
def oai(provider_gateway):
    with openai.OpenAI(base_url=provider_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def _stream(
    oai: openai.OpenAI, **kwargs: Any
) -> tuple[str, dict[int, dict[str, str]], str | None, Any, list[Any]]:
    """Text, tool calls by index, finish reason, usage and the chunks of one streamed answer."""
    chunks = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text, finish = "", None
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk" and chunk.id and chunk.created and chunk.model
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                if call.id:
                    assert not entry["id"], "a tool call's id comes once, in its first delta"
                    entry["id"], entry["name"] = call.id, call.function.name
                entry["arguments"] += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    return text, calls, finish, chunks[-1].usage, chunks


def test_plain_answer(oai, provider, fakes):
    raw = oai.chat.completions.with_raw_response.create(
        model=provider,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
    )
    completion = raw.parse()
    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens == 3 and usage.prompt_tokens > CACHED[provider]
    assert (
        usage.prompt_tokens_details is not None
        and usage.prompt_tokens_details.cached_tokens == CACHED[provider]
    )
    seen = fakes[provider].state.requests[-1]
    assert KEY not in json.dumps(seen.headers)
    if provider == "anthropic":
        assert seen.body["system"] == [{"type": "text", "text": "Be brief."}]
        assert seen.body["max_tokens"] == 4096  # Anthropic requires one: the deployment's default
        assert seen.headers["x-api-key"] == UPSTREAM_KEY and seen.headers["anthropic-version"]
    elif provider == "gemini":
        assert seen.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert seen.headers["x-goog-api-key"] == UPSTREAM_KEY
    else:
        assert seen.body["system"] == [{"text": "Be brief."}]
        assert seen.headers["Authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={bedrock_upstream.ACCESS_KEY}/"
        )
        assert fakes.aws.signatures_checked >= 1


def test_streamed_answer(oai, provider, provider_gateway):
    text, calls, finish, usage, _ = _stream(
        oai, model=provider, messages=[{"role": "user", "content": "one two three"}]
    )
    assert text == "Echo: one two three" and not calls and finish == "stop"
    assert usage.completion_tokens == 4
    with (
        httpx.Client() as http,
        http.stream(
            "POST",
            provider_gateway.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": provider, "stream": True, "messages": [{"role": "user", "content": "a b"}]},
        ) as response,
    ):
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line.removeprefix("data: "))
        validate("CreateChatCompletionStreamResponse", chunk)
        assert "usage" not in chunk, "usage goes only to clients that asked for it"


def test_weather_tool_round_trip(oai, provider, fakes):
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Tokyo?"}]
    first = oai.chat.completions.create(model=provider, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "Tokyo"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    final = oai.chat.completions.create(model=provider, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == "Weather: sunny, 21C"
    assert final.choices[0].finish_reason == "stop"
    # the upstream got the call and its result in its own format
    sent = json.dumps(fakes[provider].state.requests[-1].body)
    assert "Tokyo" in sent and "sunny, 21C" in sent


def test_parallel_tool_calls_while_streaming(oai, provider):
    text, calls, finish, usage, _ = _stream(
        oai,
        model=provider,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Paris, Rome and Tokyo?"}],
    )
    assert text == "Checking the weather."
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
        ("get_weather", {"city": "Tokyo"}),
    ]
    assert len({c["id"] for c in calls.values()}) == 3
    assert usage.completion_tokens == 3 + 3 * TOOL_CALL_TOKENS


def test_image_part(oai, provider, fakes):
    completion = oai.chat.completions.create(
        model=provider,
        messages=[{"role": "user", "content": [IMAGE_PART, {"type": "text", "text": "what is this"}]}],
    )
    assert completion.choices[0].message.content == "Echo: [image/png] what is this"
    url_part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    if provider == "bedrock":  # Converse takes image bytes only
        with pytest.raises(openai.BadRequestError, match="inline only"):
            oai.chat.completions.create(model=provider, messages=[{"role": "user", "content": [url_part]}])
        return
    completion = oai.chat.completions.create(
        model=provider, messages=[{"role": "user", "content": [url_part]}]
    )
    assert completion.choices[0].message.content == "Echo: [https://example.com/cat.png]"


def test_rate_limited_answers_429_with_retry_after(oai, provider, gateway_clock):
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model=f"{provider}-429", messages=[{"role": "user", "content": "x"}])
    error = limited.value.body
    assert (
        isinstance(error, dict)
        and error["type"] == "rate_limit_error"
        and error["code"] == "rate_limit_exceeded"
    )
    if provider != "bedrock":  # Bedrock sends no Retry-After
        assert limited.value.response.headers["retry-after"] == "7"
        # each retry waited what the upstream asked (on the gateway's clock: no real 14 s)
        assert gateway_clock.slept and all(wait >= 7 for wait in gateway_clock.slept)


def test_overloaded_answers_a_retryable_server_error(oai, provider):
    status = 529 if provider == "anthropic" else 503
    with pytest.raises(openai.InternalServerError) as overloaded:
        oai.chat.completions.create(model=f"{provider}-{status}", messages=[{"role": "user", "content": "x"}])
    assert overloaded.value.status_code == status
    assert isinstance(overloaded.value.body, dict) and overloaded.value.body["code"] == "overloaded"


def test_bad_request_is_a_400(oai, provider):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=f"{provider}-400", messages=[{"role": "user", "content": "x"}])
    assert isinstance(bad.value.body, dict) and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="arguments are not valid JSON"):
        oai.chat.completions.create(
            model=provider,
            messages=[
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{oops"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            tools=[WEATHER_TOOL],
        )
    with pytest.raises(openai.BadRequestError, match="completions"):
        oai.completions.create(model=provider, prompt="x")


def test_error_mid_stream_reaches_the_client(oai, provider):
    with pytest.raises(openai.APIError) as failed:
        _stream(oai, model=f"{provider}-stream-error", messages=[{"role": "user", "content": "a b c"}])
    assert "verloaded" in str(failed.value) or "Too many requests" in str(failed.value)


def test_a_stream_that_fails_at_once_gets_a_real_status(oai, provider):
    if provider == "gemini":  # Gemini refuses before its 200; covered by the error-class tests
        provider = "gemini-429"
        expected: type[openai.APIStatusError] = openai.RateLimitError
    else:
        expected = openai.InternalServerError if provider == "anthropic" else openai.RateLimitError
        provider = f"{provider}-early-error"
    with pytest.raises(expected) as failed:
        oai.chat.completions.create(model=provider, stream=True, messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == (529 if provider == "anthropic-early-error" else 429)


@pytest.mark.parametrize(
    "request_body",
    [
        {"messages": [{"role": "user", "content": "one two three"}]},
        {"messages": [{"role": "user", "content": "Rome and Paris"}], "tools": [WEATHER_TOOL]},
        {
            "messages": [{"role": "user", "content": [IMAGE_PART, {"type": "text", "text": "see"}]}],
            "stop": ["see"],
        },
        {"messages": [{"role": "user", "content": "a b c d e f"}], "max_tokens": 3},
    ],
    ids=["text", "parallel-tools", "stop-sequence", "max-tokens"],
)
def test_streamed_and_whole_answers_agree(oai, provider, request_body):
    whole = oai.chat.completions.create(model=provider, **request_body)
    text, calls, finish, usage, _ = _stream(oai, model=provider, **request_body)
    message = whole.choices[0].message
    assert text == (message.content or "")
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in message.tool_calls or ()
    ]
    assert finish == whole.choices[0].finish_reason
    assert usage.model_dump() == whole.usage.model_dump()


def test_the_gateway_counts_a_streams_tokens_as_the_whole_answers(oai, provider):
    """The usage the gateway records (ledger, metrics, log) for a stream whose client asked for no usage."""
    request = {"model": provider, "messages": [{"role": "user", "content": "count me please"}]}
    whole = oai.chat.completions.with_raw_response.create(**request)
    stream = oai.chat.completions.create(stream=True, **request)
    assert all(c.usage is None for c in stream)
    usage = whole.parse().usage
    for request_id in (whole.headers["x-request-id"], stream.response.headers["x-request-id"]):
        line = logged(request_id)
        assert (line["prompt_tokens"], line["completion_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
