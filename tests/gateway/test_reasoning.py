"""Reasoning across providers through the gateway: OpenAI ``reasoning_effort``, Responses ``reasoning.effort``
and Anthropic ``thinking`` become Gemini's ``thinkingConfig`` and Claude-on-Bedrock's ``thinking`` (the fakes
refuse what the real APIs refuse), and the reasoning text comes back where the client's format has a place
for it (chat ``reasoning_content``, Responses reasoning items, Anthropic thinking blocks)."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.conftest import KEY
from tests.fakes.gemini_upstream import THOUGHT_TOKENS
from tests.fakes.providers import fakes, gateway_clock, provider_gateway

__all__ = ["fakes", "gateway_clock", "provider_gateway"]  # fixtures used by name

THOUGHT = {"gemini": "Thinking (budget 8192).", "bedrock": "Thinking (budget 8192)."}


def upstream_reasoning(fakes, alias: str) -> object:
    body = fakes[alias].state.requests[-1].body
    if alias == "gemini":
        return body["generationConfig"].get("thinkingConfig")
    return (body.get("additionalModelRequestFields") or {}).get("thinking")


@pytest.fixture
def client(provider_gateway):
    with openai.OpenAI(base_url=provider_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.mark.parametrize("alias", ["gemini", "bedrock"])
def test_chat_reasoning_effort_asks_for_thinking_and_returns_it(client, fakes, alias):
    request = {
        "model": alias,
        "messages": [{"role": "user", "content": "hello there"}],
        "reasoning_effort": "medium",
        "temperature": 0.5,
        "max_tokens": 10000,
    }
    answer = client.chat.completions.create(**request)
    assert answer.choices[0].message.content == "Echo: hello there"
    assert answer.choices[0].message.model_extra["reasoning_content"] == THOUGHT[alias]
    if alias == "gemini":
        assert upstream_reasoning(fakes, alias) == {"thinkingBudget": 8192, "includeThoughts": True}
        assert answer.usage is not None and answer.usage.completion_tokens_details is not None
        assert answer.usage.completion_tokens_details.reasoning_tokens == THOUGHT_TOKENS
    else:  # Claude on Bedrock: a budget below maxTokens, temperature left to its default
        assert upstream_reasoning(fakes, alias) == {"type": "enabled", "budget_tokens": 8192}
        assert "temperature" not in fakes[alias].state.requests[-1].body["inferenceConfig"]
    chunks = list(client.chat.completions.create(stream=True, **request))
    streamed = "".join(
        c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices
    )
    assert streamed == THOUGHT[alias]


def test_effort_none_turns_gemini_thinking_off(client, fakes):
    answer = client.chat.completions.create(
        model="gemini", reasoning_effort="none", messages=[{"role": "user", "content": "hi"}]
    )
    assert upstream_reasoning(fakes, "gemini") == {"thinkingBudget": 0}
    assert not (answer.choices[0].message.model_extra or {}).get("reasoning_content")


def test_bedrock_thinking_without_max_tokens_gets_room_for_it(client, fakes):
    answer = client.chat.completions.create(
        model="bedrock", reasoning_effort="low", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.model_extra["reasoning_content"] == "Thinking (budget 2048)."
    config = fakes.bedrock.state.requests[-1].body["inferenceConfig"]
    assert config["maxTokens"] > 2048


@pytest.mark.parametrize("alias", ["gemini", "bedrock"])
def test_responses_reasoning_effort_gives_a_reasoning_item(client, alias):
    response = client.responses.create(
        model=alias, input="hello there", reasoning={"effort": "medium"}, max_output_tokens=10000
    )
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"] and response.output_text == "Echo: hello there"
    assert response.output[0].summary[0].text == THOUGHT[alias]


@pytest.mark.parametrize("alias", ["gemini", "bedrock"])
def test_anthropic_thinking_becomes_thinking_blocks(provider_gateway, fakes, alias):
    with anthropic.Anthropic(base_url=provider_gateway.url, api_key=KEY, max_retries=0, timeout=20) as claude:
        message = claude.messages.create(
            model=alias,
            max_tokens=10000,
            messages=[{"role": "user", "content": "hi"}],
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Thinking (budget 2048)."  # type: ignore[union-attr]


@pytest.mark.parametrize("alias", ["anthropic", "bedrock"])
def test_a_claude_tool_loop_from_a_chat_client_goes_on_without_thinking(client, fakes, alias):
    """Claude wants the signed thinking block of a tool-calling turn back with its results; a chat client
    cannot send it, so that request goes without thinking (and the loop does not fail)."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    history = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    answer = client.chat.completions.create(
        model=alias, messages=history, tools=tools, reasoning_effort="low", max_tokens=5000
    )
    assert answer.choices[0].message.content == "Weather: sunny"
    body = fakes[alias].state.requests[-1].body
    assert "thinking" not in body and "additionalModelRequestFields" not in body
