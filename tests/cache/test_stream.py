"""Streams and the cache: a completed stream is stored; a hit on a stream request replays as SSE that the
openai SDK parses and the OpenAPI schema accepts; a hit on a plain request comes from a stored stream."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson

from tests.cache.conftest import ask, client_for, settle
from tests.conftest import KEY
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread
from tests.openapi import validate

ON = {"enabled": True}
QUESTION = [{"role": "user", "content": "Which river runs through Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


def _stream(client, **params):
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=QUESTION, temperature=0, stream=True, **params
    )
    return list(raw.parse()), raw.headers


def test_streamed_answer_is_stored_and_replayed_as_a_stream(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as client:
        live, headers = _stream(client)
        assert headers["x-cache"] == "miss"
        settle(server)
        replayed, headers = _stream(client)
    assert headers["x-cache"] == "hit-exact"
    assert headers["content-type"].startswith("text/event-stream")
    text = "".join(c.choices[0].delta.content or "" for c in live if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == text
    assert replayed[0].choices[0].delta.role == "assistant"
    assert replayed[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in replayed)  # the client did not ask for usage
    for chunk in replayed:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(mode="json", exclude_unset=True))
    assert sum(1 for r in upstream[1].requests if r.path.endswith("/chat/completions")) == 1


def test_replayed_stream_has_usage_and_done_when_asked(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as client:
        _stream(client)
        settle(server)
        chunks, headers = _stream(client, stream_options={"include_usage": True})
    assert headers["x-cache"] == "hit-exact"
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    )
    body = {"model": "chat", "messages": QUESTION, "temperature": 0, "stream": True}
    raw = httpx.post(
        server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )
    events = [e for e in raw.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    for event in events[:-1]:
        orjson.loads(event[6:])


def test_plain_request_is_answered_from_a_stored_stream_and_back(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as client:
        live, _ = _stream(client)
        settle(server)
        answer, headers = ask(client, QUESTION[0]["content"])
        assert headers["x-cache"] == "hit-exact"
        assert answer.choices[0].message.content == "".join(
            c.choices[0].delta.content or "" for c in live if c.choices
        )
        assert answer.usage is not None and answer.usage.total_tokens > 0
        validate("CreateChatCompletionResponse", answer.model_dump(mode="json", exclude_unset=True))
        # a plain answer replays as a stream too
        ask(client, "Another question")
        settle(server)
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=[{"role": "user", "content": "Another question"}],
            temperature=0,
            stream=True,
        )
        assert raw.headers["x-cache"] == "hit-exact"
        assert (
            "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            == "Echo: Another question"
        )


def test_tool_calls_survive_a_streamed_store_and_replay(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState]
) -> None:
    server = cached_gateway(ON)
    with client_for(server) as client:
        plain, _ = ask(client, QUESTION[0]["content"], tools=TOOLS)
        _stream(client, tools=TOOLS)  # the stream request has its own key only in delivery: same key
        settle(server)
        replayed, headers = _stream(client, tools=TOOLS)
        assert headers["x-cache"] == "hit-exact"
        calls = [
            c.choices[0].delta.tool_calls for c in replayed if c.choices and c.choices[0].delta.tool_calls
        ]
        assert calls[0][0].function.name == plain.choices[0].message.tool_calls[0].function.name
        assert calls[0][0].function.arguments == plain.choices[0].message.tool_calls[0].function.arguments
        assert replayed[-1].choices[0].finish_reason == "tool_calls"
