"""Chat completions through the gateway with the official openai SDK: sync, async, streaming."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.conftest import KEY, UPSTREAM_KEY
from tests.openapi import validate

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_sync_chat_is_a_valid_openai_response(client, upstream):
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello there"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert raw.headers["x-gateway-deployment"] == "openai-compatible/fake-model"
    assert len(raw.headers["x-request-id"]) >= 16
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
    # the upstream got its own key and model name, never the tenant's key
    seen = upstream[1].requests[-1]
    assert seen.body["model"] == "fake-model"
    assert seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert KEY not in str(seen.headers)


def test_parameters_pass_through_unchanged(client, upstream):
    params = dict(
        n=2,
        seed=7,
        user="u-1",
        logprobs=True,
        top_logprobs=1,
        temperature=0.3,
        max_tokens=20,
        response_format={"type": "json_object"},
        stream_options=None,
        tools=[WEATHER_TOOL],
        tool_choice="auto",
    )
    completion = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "weather?"}],
        **{k: v for k, v in params.items() if v is not None},
    )
    sent = upstream[1].requests[-1].body
    for name in (
        "n",
        "seed",
        "user",
        "logprobs",
        "top_logprobs",
        "temperature",
        "max_tokens",
        "response_format",
        "tools",
        "tool_choice",
    ):
        assert sent[name] == params[name], name
    assert len(completion.choices) == 2
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Paris"}'


def test_logprobs_come_back(client):
    completion = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "a b"}], logprobs=True, top_logprobs=1
    )
    assert [t.token for t in completion.choices[0].logprobs.content] == ["Echo:", "a", "b"]


def test_streaming_relays_every_chunk_with_usage(client, gateway):
    with httpx.Client() as http:
        with http.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={
                "model": "chat",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "one two three"}],
            },
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    import json

    for line in lines[:-1]:
        validate("CreateChatCompletionStreamResponse", json.loads(line.removeprefix("data: ")))

    stream = client.chat.completions.create(
        model="chat",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "one two three"}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: one two three"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_streamed_tool_call_arguments_arrive_whole(client):
    stream = client.chat.completions.create(
        model="chat", stream=True, tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "weather?"}]
    )
    arguments = ""
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            arguments += call.function.arguments or ""
    assert arguments == '{"city":"Paris"}'


async def test_async_client_concurrent(gateway):
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        results = await asyncio.gather(
            *[
                client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"n{i}"}])
                for i in range(20)
            ]
        )
        assert sorted(str(r.choices[0].message.content) for r in results) == sorted(
            f"Echo: n{i}" for i in range(20)
        )
        stream = await client.chat.completions.create(
            model="chat", stream=True, messages=[{"role": "user", "content": "async stream"}]
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "Echo: async stream"


def test_request_id_from_client_is_kept(client):
    raw = client.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "trace-123"},
    )
    assert raw.headers["x-request-id"] == "trace-123"


@pytest.mark.parametrize("header", ["api-key", "x-api-key"])
def test_azure_and_anthropic_key_headers(gateway, header):
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={header: KEY},
        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200


def test_stream_usage_is_counted_but_only_sent_to_clients_that_ask(client, gateway, upstream):
    import json

    from tests.conftest import LOG_PATH

    stream = client.chat.completions.create(
        model="chat", stream=True, messages=[{"role": "user", "content": "count me please"}]
    )
    chunks = list(stream)
    # the gateway asked the upstream for usage to count tokens ...
    assert upstream[1].requests[-1].body["stream_options"] == {"include_usage": True}
    # ... but a client that did not ask gets no usage chunk, as from OpenAI
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: count me please"
    request_id = stream.response.headers["x-request-id"]
    deadline = time.monotonic() + 5  # the log line is written just after the last byte goes out
    while not (
        lines := [json.loads(line) for line in LOG_PATH.read_text().splitlines() if request_id in line]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert lines and lines[-1]["completion_tokens"] == 4 and lines[-1]["prompt_tokens"] > 0
