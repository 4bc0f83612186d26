"""``POST /v1/messages`` (Anthropic's Messages API) with the official anthropic SDK, in front of an OpenAI-format
upstream and of the Anthropic, Gemini and Bedrock adapters: plain, streamed, tools, parallel tool calls,
images, errors in Anthropic's format, and the same answer streamed or not."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from tests.conftest import KEY, config_text
from tests.fakes.providers import PROVIDERS, fakes, gateway_clock, logged, provider_gateway
from tests.harness import ServerThread

__all__ = ["fakes", "gateway_clock", "provider_gateway"]

ALIASES = ("chat", *PROVIDERS)  # chat: conftest's OpenAI-format fake
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}


@pytest.fixture
def claude(provider_gateway):
    with anthropic.Anthropic(base_url=provider_gateway.url, api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def _create(claude: anthropic.Anthropic, **kwargs: Any) -> Any:
    return claude.messages.create(max_tokens=200, **kwargs)


@pytest.mark.parametrize("alias", ALIASES)
def test_plain_message(claude, alias, upstream):
    message = _create(
        claude, model=alias, system="Be brief.", messages=[{"role": "user", "content": "hello there"}]
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Echo: hello there"
    assert message.stop_reason == "end_turn" and message.model == alias
    assert message.usage.output_tokens == 3 and message.usage.input_tokens > 0
    if alias == "chat":
        sent = upstream[1].requests[-1].body
        assert sent["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
        ]
        assert sent["max_tokens"] == 200
    if alias == "anthropic":  # cache reads and writes come back apart, as Anthropic counts them
        assert message.usage.cache_read_input_tokens == 3 and message.usage.cache_creation_input_tokens == 2


@pytest.mark.parametrize("alias", ALIASES)
def test_streamed_message_equals_the_whole_one(claude, alias):
    request = {"model": alias, "messages": [{"role": "user", "content": "one two three"}]}
    whole = _create(claude, **request)
    with claude.messages.stream(max_tokens=200, **request) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.model_dump() == whole.usage.model_dump()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("alias", ALIASES)
def test_stop_sequence_is_named_where_the_upstream_names_it(claude, alias, stream):
    request = {
        "model": alias,
        "max_tokens": 200,
        "stop_sequences": ["STOP", "END"],
        "messages": [{"role": "user", "content": "one two STOP three"}],
    }
    if stream:
        with claude.messages.stream(**request) as s:
            message = s.get_final_message()
    else:
        message = claude.messages.create(**request)
    assert message.content[0].text == "Echo: one two"
    # Anthropic (native) and a vLLM-style chat upstream (``stop_reason``) say which sequence stopped it;
    # Gemini and Bedrock's Converse do not: the documented rule answers end_turn then.
    if alias in ("chat", "anthropic"):
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")
    else:
        assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)


def test_an_anthropic_upstream_names_its_stop_sequence_to_chat_clients(provider_gateway):
    with openai.OpenAI(
        base_url=provider_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20
    ) as client:
        answer = client.chat.completions.create(
            model="anthropic", stop=["STOP"], messages=[{"role": "user", "content": "one STOP two"}]
        )
        assert answer.choices[0].finish_reason == "stop"
        assert answer.choices[0].model_extra == {"stop_reason": "STOP"}


@pytest.mark.parametrize("alias", ALIASES)
def test_weather_tool_round_trip(claude, alias, upstream):
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = _create(claude, model=alias, tools=[WEATHER], messages=messages)
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ]
    # The OpenAI-format fake calls a tool whenever it may: tell it not to, as a client finishing up would.
    choice = {"type": "none"} if alias == "chat" else {"type": "auto"}
    final = _create(claude, model=alias, tools=[WEATHER], tool_choice=choice, messages=messages)
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == ("Echo: sunny" if alias == "chat" else "Weather: sunny")
    if alias == "chat":
        sent = upstream[1].requests[-1].body["messages"]
        assert sent[1]["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        }
        assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


@pytest.mark.parametrize("alias", PROVIDERS)  # the OpenAI-format fake answers one call per choice
def test_parallel_tool_calls_while_streaming(claude, alias):
    request = {
        "model": alias,
        "tools": [WEATHER],
        "messages": [{"role": "user", "content": "Rome and Tokyo"}],
        "tool_choice": {"type": "auto"},
    }
    with claude.messages.stream(max_tokens=200, **request) as stream:
        events = list(stream)
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [u.input for u in uses] == [{"city": "Rome"}, {"city": "Tokyo"}]
    assert final.stop_reason == "tool_use"
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    whole = _create(claude, **request)
    # ids aside (Gemini gives calls none: the gateway makes them), the same blocks
    assert [b.model_dump(exclude={"id"}) for b in whole.content] == [
        b.model_dump(exclude={"id"}) for b in final.content
    ]
    assert whole.usage.model_dump() == final.usage.model_dump()


def test_one_tool_call_streamed_from_an_openai_upstream(claude):
    with claude.messages.stream(
        max_tokens=200, model="chat", tools=[WEATHER], messages=[{"role": "user", "content": "weather?"}]
    ) as stream:
        final = stream.get_final_message()
    [use] = final.content
    assert use.type == "tool_use" and use.input == {"city": "Paris"} and final.stop_reason == "tool_use"


@pytest.mark.parametrize("alias", ALIASES)
def test_image_block(claude, alias, upstream):
    message = _create(
        claude,
        model=alias,
        messages=[{"role": "user", "content": [IMAGE, {"type": "text", "text": "what is this"}]}],
    )
    if alias == "chat":  # the OpenAI-format fake echoes "parts" for array content
        assert message.content[0].text == "Echo: parts"
        part = upstream[1].requests[-1].body["messages"][0]["content"][0]
        assert part == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    else:
        assert message.content[0].text == "Echo: [image/png] what is this"


def test_errors_come_in_anthropics_format(claude, provider_gateway):
    with (
        anthropic.Anthropic(base_url=provider_gateway.url, api_key="wrong", max_retries=0) as stranger,
        pytest.raises(anthropic.AuthenticationError) as denied,
    ):
        _create(stranger, model="chat", messages=[{"role": "user", "content": "x"}])
    assert denied.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    with pytest.raises(anthropic.NotFoundError) as missing:
        _create(claude, model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as limited:
        _create(claude, model="chat-429", messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.RateLimitError) as limited:
        _create(claude, model="anthropic-429", messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        _create(claude, model="anthropic-529", messages=[{"role": "user", "content": "x"}])
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with httpx.Client() as http:
        response = http.post(
            provider_gateway.url + "/v1/messages",
            headers={"x-api-key": KEY},
            json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
        )
        assert response.status_code == 400
        assert response.json()["error"] == {
            "type": "invalid_request_error",
            "message": "max_tokens: Field required (an integer of at least 1)",
        }
        response = http.post(
            provider_gateway.url + "/v1/messages", headers={"x-api-key": KEY}, content=b"{not json"
        )
        assert response.status_code == 400 and response.json()["type"] == "error"


@pytest.mark.parametrize("alias", ["chat-cut", "anthropic-stream-error", "bedrock-stream-error"])
def test_failure_mid_stream_is_an_error_event(claude, alias):
    with (
        pytest.raises(anthropic.APIStatusError),
        claude.messages.stream(
            max_tokens=50, model=alias, messages=[{"role": "user", "content": "a b c d"}]
        ) as stream,
    ):
        stream.get_final_message()


@pytest.mark.parametrize("alias", ["chat", "bedrock"])
def test_the_gateway_counts_tokens_of_messages_streams(claude, alias):
    request = {"model": alias, "max_tokens": 50, "messages": [{"role": "user", "content": "count me please"}]}
    whole = claude.messages.with_raw_response.create(**request)
    with claude.messages.with_streaming_response.create(stream=True, **request) as streamed:
        streamed.read()
    expected = whole.parse().usage
    for request_id in (whole.headers["x-request-id"], streamed.headers["x-request-id"]):
        line = logged(request_id)
        prompt = (
            expected.input_tokens
            + (expected.cache_read_input_tokens or 0)
            + (expected.cache_creation_input_tokens or 0)
        )
        assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt, expected.output_tokens)


def test_models_stay_one_list(provider_gateway):
    with openai.OpenAI(base_url=provider_gateway.url + "/v1", api_key=KEY) as client:
        ids = {m.id for m in client.models.list()}
    assert {"chat", *PROVIDERS} <= ids


def _openai_parallel_upstream() -> web.Application:
    """An OpenAI-format upstream answering two parallel tool calls, streamed the way OpenAI streams them:
    the first delta of each call has its id and name, its arguments follow in fragments."""
    calls = [("call_a", '{"city": "Paris"}'), ("call_b", '{"city": "Rome"}')]
    usage = {
        "prompt_tokens": 20,
        "completion_tokens": 12,
        "total_tokens": 32,
        "prompt_tokens_details": {"cached_tokens": 4},
    }

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {
            "id": "chatcmpl-par",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": a}}
                    for i, a in calls
                ],
            }
            return web.json_response(
                {
                    "id": "chatcmpl-par",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "m",
                    "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": None}))
        for index, (call_id, arguments) in enumerate(calls):
            await response.write(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for piece in (arguments[:5], arguments[5:]):
                await response.write(
                    chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                )
        await response.write(chunk({}, "tool_calls"))
        await response.write(chunk(None, usage=usage) + b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app


def test_parallel_tool_calls_streamed_from_an_openai_upstream(start_gateway, upstream):
    parallel = ServerThread(_openai_parallel_upstream).start()
    try:
        gateway = start_gateway(
            config_text(
                upstream[0].url,
                f"""  - name: gpt
    deployments:
      - provider: openai-compatible
        model: m
        api_base: {parallel.url}/v1""",
            )
        )
        with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as client:
            request: dict[str, Any] = {
                "model": "gpt",
                "max_tokens": 100,
                "tools": [WEATHER],
                "messages": [{"role": "user", "content": "Paris and Rome"}],
            }
            with client.messages.stream(**request) as stream:
                final = stream.get_final_message()
            whole = client.messages.create(**request)
    finally:
        parallel.stop()
    for message in (final, whole):
        assert [(b.type, b.id, b.input) for b in message.content] == [  # type: ignore[union-attr]
            ("tool_use", "call_a", {"city": "Paris"}),
            ("tool_use", "call_b", {"city": "Rome"}),
        ]
        assert message.stop_reason == "tool_use"
        assert message.usage.input_tokens == 16 and message.usage.cache_read_input_tokens == 4
        assert message.usage.output_tokens == 12
