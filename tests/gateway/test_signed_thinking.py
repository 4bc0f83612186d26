"""Claude's signed thinking carried across formats: a Responses or chat client of an Anthropic deployment gets
the turn's signed thinking blocks (a Responses ``reasoning`` item's ``encrypted_content``; chat
``thinking_blocks``), sends them back with its tool results, and the Anthropic upstream receives the thinking
block with its signature again, thinking still on (the fake refuses a tool loop whose turn lost its thinking
block, as Anthropic does)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import KEY
from tests.fakes.anthropic_upstream import SIGNATURE
from tests.fakes.providers import fakes, gateway_clock, provider_gateway

__all__ = ["fakes", "gateway_clock", "provider_gateway"]  # fixtures used by name

CHAT_TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
RESPONSES_TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}]
THOUGHT = "Thinking (enabled, budget 2048)."   # what the fake thinks with effort low's budget


@pytest.fixture
def client(provider_gateway):
    with openai.OpenAI(base_url=provider_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def upstream_turn(fakes) -> dict[str, Any]:
    """The assistant turn of the Anthropic fake's last request, and that request's thinking."""
    body = fakes["anthropic"].state.requests[-1].body
    turns = [m for m in body["messages"] if m["role"] == "assistant"]
    return {"thinking": body.get("thinking"), "blocks": turns[-1]["content"]}


def assert_signed_turn_received(fakes) -> None:
    turn = upstream_turn(fakes)
    assert turn["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert turn["blocks"][0] == {"type": "thinking", "thinking": THOUGHT, "signature": SIGNATURE}
    assert [b["type"] for b in turn["blocks"]] == ["thinking", "text", "tool_use"]


@pytest.mark.parametrize("stream", [False, True])
def test_responses_reasoning_item_carries_the_signature_back(client, fakes, stream):
    asked: Any = {"model": "anthropic", "input": [{"role": "user", "content": "weather in Paris?"}],
                  "tools": RESPONSES_TOOLS, "reasoning": {"effort": "low"}, "max_output_tokens": 5000,
                  "store": False}
    if stream:
        with client.responses.stream(**asked) as events:
            kinds = [event.type for event in events]
            first = events.get_final_response()
        assert "response.reasoning_summary_text.delta" in kinds
    else:
        first = client.responses.create(**asked)
    reasoning = [item for item in first.output if item.type == "reasoning"]
    assert len(reasoning) == 1 and reasoning[0].encrypted_content
    assert reasoning[0].summary[0].text == THOUGHT
    call = next(item for item in first.output if item.type == "function_call")
    output = [item.model_dump(exclude_none=True) for item in first.output]
    second = client.responses.create(
        model="anthropic", tools=RESPONSES_TOOLS, reasoning={"effort": "low"}, max_output_tokens=5000, store=False,
        input=[*asked["input"], *output, {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == "Weather: sunny"
    assert_signed_turn_received(fakes)


def test_a_continued_stored_response_carries_the_signature(client, fakes):
    first = client.responses.create(model="anthropic", input="weather in Paris?", tools=RESPONSES_TOOLS,
                                    reasoning={"effort": "low"}, max_output_tokens=5000)
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(model="anthropic", previous_response_id=first.id, tools=RESPONSES_TOOLS,
                                     reasoning={"effort": "low"}, max_output_tokens=5000,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "sunny"}])
    assert second.output_text == "Weather: sunny"
    assert_signed_turn_received(fakes)


def test_openai_encrypted_reasoning_is_not_sent_to_another_model(client, fakes):
    """Only the gateway's own sealed blocks are unsealed: OpenAI's encrypted reasoning means nothing to Claude."""
    client.responses.create(model="anthropic", max_output_tokens=100, input=[
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-openai-opaque"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}])
    assert upstream_turn(fakes)["blocks"] == [{"type": "text", "text": "hello"}]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_thinking_blocks_carry_the_signature_back(client, fakes, stream):
    history: Any = [{"role": "user", "content": "weather in Paris?"}]
    asked: Any = {"model": "anthropic", "tools": CHAT_TOOLS, "reasoning_effort": "low", "max_tokens": 5000}
    if stream:
        blocks: list[Any] = []
        calls: list[Any] = []
        text = ""
        for chunk in client.chat.completions.create(messages=history, stream=True, **asked):
            for choice in chunk.choices:
                blocks += (choice.delta.model_extra or {}).get("thinking_blocks") or []
                text += choice.delta.content or ""
                calls += choice.delta.tool_calls or []
        call = {"id": calls[0].id, "type": "function",
                "function": {"name": "get_weather", "arguments": "".join(c.function.arguments or "" for c in calls)}}
        turn = {"role": "assistant", "content": text, "tool_calls": [call], "thinking_blocks": blocks}
    else:
        message = client.chat.completions.create(messages=history, **asked).choices[0].message
        turn = message.model_dump(exclude_none=True)
        blocks = turn["thinking_blocks"]
    assert blocks == [{"type": "thinking", "thinking": THOUGHT, "signature": SIGNATURE}]
    answer = client.chat.completions.create(
        messages=[*history, turn, {"role": "tool", "tool_call_id": turn["tool_calls"][0]["id"], "content": "sunny"}],
        **asked)
    assert answer.choices[0].message.content == "Weather: sunny"
    assert_signed_turn_received(fakes)
