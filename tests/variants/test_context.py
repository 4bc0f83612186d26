"""Context-length policies (docs/variants.md#context-length-policies) through the openai SDK and a real
gateway, against the fake OpenAI upstream: what the upstream receives is what these tests inspect."""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Iterator
from typing import Any, cast

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from gateway.auth import hash_key
from gateway.config import ConfigError, parse_config
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY, log_line
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread

WINDOW = 700
MAX_TOKENS = 50
TOOLS: list[ChatCompletionFunctionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a city up.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@functools.cache
def _encoding() -> Any:
    with warnings.catch_warnings():  # bpe_openai reads its data with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

        return bpe_openai.encoding_for_model("gpt-4o-mini")


def tokens_as_openai_counts(messages: list[dict[str, Any]], tools: Any = None) -> int:
    """The prompt's size as docs/variants.md says it is counted (OpenAI's chat framing, o200k tokens)."""
    enc = _encoding()

    def n(text: str) -> int:
        return len(enc.encode_ordinary(text)) if text else 0

    total = 3 + (n(orjson.dumps(tools).decode()) if tools else 0)
    for m in messages:
        total += 3
        if isinstance(m.get("content"), str):
            total += n(m["content"])
        if m.get("tool_calls"):
            total += n(orjson.dumps(m["tool_calls"]).decode())
    return total


def _deployment(url: str, model: str, window: int) -> str:
    return json.dumps(
        {
            "provider": "openai-compatible",
            "model": model,
            "api_base": f"{url}/v1",
            "api_key": UPSTREAM_KEY,
            "context_window": window,
        }
    )


def _config(
    url: str, policy: str, *, model: str = "gpt-4o-mini", globex: str | None = None, window: int = WINDOW
) -> str:
    globex_context = f", context: {{policy: {globex}}}" if globex else ""
    return f"""
models:
  - name: chat
    deployments: [{_deployment(url, model, window)}]
    context: {{policy: {policy}}}
    fallbacks: [{{alias: big, on: [context_window]}}]
  - name: big
    deployments: [{_deployment(url, "big-model", 1_000_000)}]
tenants:
  - {{name: acme, keys: ["{hash_key(KEY)}"]}}
  - {{name: globex, keys: ["{hash_key(OTHER_KEY)}"]{globex_context}}}
"""


@pytest.fixture
def client_for(upstream: tuple[ServerThread, FakeState], start_gateway: Any) -> Iterator[Any]:
    clients: list[openai.OpenAI] = []

    def make(policy: str, key: str = KEY, **kwargs: Any) -> openai.OpenAI:
        gateway = start_gateway(_config(upstream[0].url, policy, **kwargs))
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=20)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def agent_conversation(rounds: int) -> list[dict[str, Any]]:
    """A system prompt, then ``rounds`` of user question -> two tool calls -> their results -> answer, then
    a last user turn."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a weather assistant. Be brief."}]
    for r in range(rounds):
        messages.append(
            {"role": "user", "content": f"Round {r}: what is the weather in Paris and in Rome today?"}
        )
        calls = [
            {
                "id": f"call_{r}_{c}",
                "type": "function",
                "function": {"name": "lookup", "arguments": json.dumps({"city": city})},
            }
            for c, city in enumerate(("Paris", "Rome"))
        ]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for call in calls:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "content": f"Sunny, {20 + r} degrees, light wind from the west in round {r}.",
                }
            )
        messages.append({"role": "assistant", "content": f"Both sunny in round {r}, about {20 + r} degrees."})
    messages.append({"role": "user", "content": "And tomorrow? Answer for both cities, please."})
    return messages


def _sent(state: FakeState) -> list[dict[str, Any]]:
    return state.requests[-1].body["messages"]


def _pairs_intact(messages: list[dict[str, Any]]) -> None:
    called = {c["id"] for m in messages for c in m.get("tool_calls") or ()}
    answered = {m["tool_call_id"] for m in messages if m["role"] == "tool"}
    assert called == answered, "every tool call keeps its result and every result its call"
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            assert any(
                m["tool_call_id"] in {c["id"] for c in p.get("tool_calls") or ()} for p in messages[:i]
            )


def test_truncate_oldest_drops_whole_turns_keeps_tool_pairs_and_fits_exactly(client_for, upstream):
    client = client_for("truncate_oldest")
    conversation = agent_conversation(12)
    before = tokens_as_openai_counts(conversation, TOOLS)
    assert before > WINDOW  # the test means something only if the conversation is too long

    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=conversation, tools=TOOLS, max_tokens=MAX_TOKENS
    )
    assert raw.parse().choices[0].finish_reason
    sent = _sent(upstream[1])
    assert upstream[1].requests[-1].body["model"] == "gpt-4o-mini"  # no fallback: it was made to fit
    assert sent[0] == conversation[0] and sent[-1] == conversation[-1]
    assert sent == [m for m in conversation if m in sent]  # order kept, nothing rewritten
    _pairs_intact(sent)
    after = tokens_as_openai_counts(sent, TOOLS)
    assert after <= WINDOW - MAX_TOKENS
    # Exactly: the newest turn dropped would not have fit.
    dropped = [i for i, m in enumerate(conversation) if m not in sent]
    last_dropped_user = max(i for i in dropped if conversation[i]["role"] == "user")
    turn_back = [m for i, m in enumerate(conversation) if i not in dropped or i >= last_dropped_user]
    assert tokens_as_openai_counts(turn_back, TOOLS) > WINDOW - MAX_TOKENS
    assert raw.headers["x-gateway-context-truncated"] == f"{before - after} tokens"
    # The request is billed for what was sent: the upstream's count of the shorter prompt.
    line = log_line(raw.headers["x-request-id"])
    assert line["prompt_tokens"] == len(orjson.dumps(sent)) // 4 + 1


def test_truncate_oldest_keeps_tool_calls_after_the_last_user_turn(client_for, upstream):
    client = client_for("truncate_oldest")
    conversation = agent_conversation(12)
    tail_call = {"id": "call_last", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    conversation += [
        {"role": "assistant", "content": None, "tool_calls": [tail_call]},
        {"role": "tool", "tool_call_id": "call_last", "content": "Rain tomorrow in both."},
    ]
    client.chat.completions.create(model="chat", messages=conversation, tools=TOOLS, max_tokens=MAX_TOKENS)
    sent = _sent(upstream[1])
    assert sent[-3:] == conversation[-3:]
    _pairs_intact(sent)
    assert tokens_as_openai_counts(sent, TOOLS) <= WINDOW - MAX_TOKENS


def test_truncate_oldest_refuses_when_the_kept_part_alone_is_too_long(client_for, upstream):
    client = client_for("truncate_oldest")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "word " * 2000}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=messages, max_tokens=MAX_TOKENS)
    assert info.value.code == "context_length_exceeded"
    assert "last user turn" in info.value.message
    assert upstream[1].requests == []


def test_truncate_middle_keeps_head_and_tail_of_the_long_message_and_fits(client_for, upstream):
    client = client_for("truncate_middle")
    document = " ".join(f"line{i} of the report says {i * 7}." for i in range(400))
    messages = [{"role": "system", "content": "Summarize."}, {"role": "user", "content": document}]
    before = tokens_as_openai_counts(messages)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=messages, max_tokens=MAX_TOKENS
    )
    raw.parse()
    sent = _sent(upstream[1])
    assert sent[0] == messages[0]
    text = sent[1]["content"]
    head, marker, tail = text.partition("\n[... ")
    assert marker and document.startswith(head) and len(head) > 200
    omitted, _, tail = tail.partition(" tokens omitted ...]\n")
    assert document.endswith(tail) and len(tail) > 200
    after = tokens_as_openai_counts(sent)
    limit = WINDOW - MAX_TOKENS
    assert limit - 4 <= after <= limit  # filled to the window, give or take the joins' tokens
    assert raw.headers["x-gateway-context-truncated"] == f"{before - after} tokens"
    assert int(omitted) >= before - after


def test_truncate_middle_estimates_with_a_margin_without_a_tokenizer(client_for, upstream):
    client = client_for("truncate_middle", model="fake-model")
    document = "abcd" * 3000  # 3000 tokens by the estimate; 3300 with the 10% margin
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": document}])
    text = _sent(upstream[1])[0]["content"]
    estimated = math.ceil(len(text) / 4 * 1.1)  # the estimate with its 10% margin
    assert "tokens omitted" in text and text.startswith("abcd" * 100) and text.endswith("abcd" * 100)
    assert WINDOW - 4 <= 3 + 3 + estimated <= WINDOW  # framing: 3 for the message, 3 for the reply


def test_reject_refuses_at_once_without_trying_the_fallback(client_for, upstream):
    client = client_for("reject")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=agent_conversation(12), tools=TOOLS)
    assert info.value.status_code == 400 and info.value.code == "context_length_exceeded"
    assert f"maximum context length is {WINDOW} tokens" in info.value.message
    assert upstream[1].requests == []  # neither chat's deployment nor the fallback alias
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "short"}])
    assert len(upstream[1].requests) == 1


def test_fallback_hands_a_long_prompt_to_the_fallback_alias(client_for, upstream):
    client = client_for("fallback")
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=agent_conversation(12), tools=TOOLS
    )
    raw.parse()
    assert upstream[1].requests[-1].body["model"] == "big-model"
    assert upstream[1].requests[-1].body["messages"] == agent_conversation(12)
    assert "x-gateway-context-truncated" not in raw.headers


def test_a_tenant_policy_replaces_the_alias_policy(client_for, upstream):
    acme = client_for("truncate_oldest", globex="reject")
    globex = openai.OpenAI(base_url=str(acme.base_url), api_key=OTHER_KEY, max_retries=0, timeout=20)
    with globex:
        with pytest.raises(openai.BadRequestError):
            globex.chat.completions.create(
                model="chat",
                messages=cast("list[ChatCompletionMessageParam]", agent_conversation(12)),
                tools=TOOLS,
            )
    assert upstream[1].requests == []
    acme.chat.completions.create(model="chat", messages=agent_conversation(12), tools=TOOLS)
    assert len(upstream[1].requests) == 1


def test_a_truncated_stream_says_so_in_its_headers(client_for, upstream):
    client = client_for("truncate_oldest")
    with client.chat.completions.with_streaming_response.create(
        model="chat", messages=agent_conversation(12), tools=TOOLS, max_tokens=MAX_TOKENS, stream=True
    ) as response:
        assert response.headers["x-gateway-context-truncated"].endswith(" tokens")
        chunks = list(response.iter_lines())
    assert any("[DONE]" in c for c in chunks)
    assert tokens_as_openai_counts(_sent(upstream[1]), TOOLS) <= WINDOW - MAX_TOKENS


def test_an_unknown_policy_is_a_config_error_naming_the_field(upstream):
    with pytest.raises(ConfigError) as info:
        parse_config(_config(upstream[0].url, "drop_everything"), env={})
    assert any(p.startswith("models[0].context.policy:") for p in info.value.problems)
