"""``POST /v1/messages`` with the official anthropic SDK in front of the bundled engine (SmolLM2, in-process):
Anthropic's API in, the local engine's answer translated back, streamed and not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.conftest import KEY
from tests.harness import ServerThread

QUESTION: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def claude(local_gateway: ServerThread) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=local_gateway.url, api_key=KEY, max_retries=0, timeout=120) as client:
        yield client


def test_the_local_engine_answers_anthropic_clients(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="smollm2", max_tokens=24, messages=QUESTION, extra_body={"temperature": 0}
    )  # this SDK version has no temperature argument
    assert message.type == "message" and message.role == "assistant" and message.model == "smollm2"
    assert [b.type for b in message.content] == ["text"]
    assert isinstance(message.content[0], anthropic.types.TextBlock) and "Paris" in message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 5 and 0 < message.usage.output_tokens <= 24


def test_a_streamed_local_answer_equals_the_whole_one(claude: anthropic.Anthropic) -> None:
    request = {"model": "smollm2", "max_tokens": 24, "messages": QUESTION, "extra_body": {"temperature": 0}}
    whole = claude.messages.create(**request)  # type: ignore[call-overload]
    with claude.messages.stream(**request) as stream:  # type: ignore[arg-type]
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events
    assert final.content[0].text == whole.content[0].text and "Paris" in final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_what_the_engine_cannot_do_is_an_anthropic_shaped_400(claude: anthropic.Anthropic) -> None:
    tool: anthropic.types.ToolParam = {
        "name": "get_weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model="smollm2",
            max_tokens=16,
            tools=[tool],
            tool_choice={"type": "tool", "name": "get_time"},
            messages=QUESTION,
        )
    assert caught.value.status_code == 400
    body = caught.value.body
    assert (
        isinstance(body, dict)
        and body["type"] == "error"
        and body["error"]["type"] == "invalid_request_error"
    )
    assert "get_time" in body["error"]["message"]  # a tool_choice naming no tool it was given
