"""Claude's signed thinking carried across formats: a Responses, chat or (translated) Messages client of an
Anthropic deployment gets the turn's signed thinking blocks (a Responses ``reasoning`` item's
``encrypted_content``; chat ``thinking_blocks``; Anthropic's own blocks), sends them back with its tool results, and the Anthropic upstream receives the thinking
block with its signature again, thinking still on (the fake refuses a tool loop whose turn lost its thinking
block, as Anthropic does)."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import KEY, UPSTREAM_KEY, config_text
from tests.fakes.anthropic_upstream import SIGNATURE
from tests.fakes.providers import deployment, fakes, gateway_clock, provider_gateway

__all__ = ["fakes", "gateway_clock", "provider_gateway"]  # fixtures used by name

CHAT_TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
RESPONSES_TOOLS: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
THOUGHT = "Thinking (enabled, budget 2048)."  # what the fake thinks with effort low's budget


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
    asked: Any = {
        "model": "anthropic",
        "input": [{"role": "user", "content": "weather in Paris?"}],
        "tools": RESPONSES_TOOLS,
        "reasoning": {"effort": "low"},
        "max_output_tokens": 5000,
        "store": False,
    }
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
        model="anthropic",
        tools=RESPONSES_TOOLS,
        reasoning={"effort": "low"},
        max_output_tokens=5000,
        store=False,
        input=[
            *asked["input"],
            *output,
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == "Weather: sunny"
    assert_signed_turn_received(fakes)


def test_a_continued_stored_response_carries_the_signature(client, fakes):
    first = client.responses.create(
        model="anthropic",
        input="weather in Paris?",
        tools=RESPONSES_TOOLS,
        reasoning={"effort": "low"},
        max_output_tokens=5000,
    )
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(
        model="anthropic",
        previous_response_id=first.id,
        tools=RESPONSES_TOOLS,
        reasoning={"effort": "low"},
        max_output_tokens=5000,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.output_text == "Weather: sunny"
    assert_signed_turn_received(fakes)


def test_openai_encrypted_reasoning_is_not_sent_to_another_model(client, fakes):
    """Only the gateway's own sealed blocks are unsealed: OpenAI's encrypted reasoning means nothing to Claude."""
    client.responses.create(
        model="anthropic",
        max_output_tokens=100,
        input=[
            {"role": "user", "content": "hi"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-openai-opaque"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
    )
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
        call = {
            "id": calls[0].id,
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": "".join(c.function.arguments or "" for c in calls),
            },
        }
        turn = {"role": "assistant", "content": text, "tool_calls": [call], "thinking_blocks": blocks}
    else:
        message = client.chat.completions.create(messages=history, **asked).choices[0].message
        turn = message.model_dump(exclude_none=True)
        blocks = turn["thinking_blocks"]
    assert blocks == [{"type": "thinking", "thinking": THOUGHT, "signature": SIGNATURE}]
    answer = client.chat.completions.create(
        messages=[
            *history,
            turn,
            {"role": "tool", "tool_call_id": turn["tool_calls"][0]["id"], "content": "sunny"},
        ],
        **asked,
    )
    assert answer.choices[0].message.content == "Weather: sunny"
    assert_signed_turn_received(fakes)


@pytest.fixture
def mixed(fakes, upstream, start_gateway):
    """An alias of an Anthropic and an OpenAI-format deployment (so Messages requests are translated), routed
    to the cheaper known one: Claude (the other's price is unknown)."""
    extra = f"""  - name: mixed
    routing: {{strategy: lowest_cost}}
    deployments:
      - {deployment("anthropic", fakes, "claude-3-5-sonnet-20241022")}
      - provider: openai-compatible
        model: fake-model
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}"""
    return start_gateway(config_text(upstream[0].url, extra))


@pytest.mark.parametrize("stream", [False, True])
def test_a_translated_messages_answer_keeps_claudes_signature(mixed, fakes, stream):
    """A Messages client of a translated path gets the signed thinking block (streamed: its
    ``signature_delta``), and its next turn carries it back to Claude."""
    asked: Any = {
        "model": "mixed",
        "max_tokens": 5000,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
    }
    history: Any = [{"role": "user", "content": "weather in Paris?"}]
    with anthropic.Anthropic(base_url=mixed.url, api_key=KEY, max_retries=0, timeout=20) as claude:
        if stream:
            with claude.messages.stream(messages=history, **asked) as events:
                kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in events]
                first = events.get_final_message()
            assert ("content_block_delta", "signature_delta") in kinds
        else:
            first = claude.messages.create(messages=history, **asked)
        assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
        assert first.content[0].signature == SIGNATURE  # type: ignore[union-attr]
        call: Any = first.content[2]
        turns: Any = [
            *history,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
            },
        ]
        answer = claude.messages.create(messages=turns, **asked)
    assert answer.content[-1].text == "Weather: sunny"
    assert_signed_turn_received(fakes)
