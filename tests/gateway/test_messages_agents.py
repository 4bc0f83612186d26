"""``/v1/messages`` as Claude Code uses it today, with the official anthropic SDK: ``system`` messages in the
conversation, thinking (its signature carried across turns to an Anthropic upstream), ``anthropic-beta`` and
Anthropic-only fields passed to Anthropic and left out for others, ``count_tokens`` exact or estimated, and
``HEAD /``."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.conftest import KEY
from tests.fakes.anthropic_upstream import SIGNATURE
from tests.fakes.providers import fakes, gateway_clock, provider_gateway

__all__ = ["fakes", "gateway_clock", "provider_gateway"]  # fixtures used by name

BETAS = ["context-management-2025-06-27", "mid-conversation-system-2026-04-07"]
CLAUDE_CODE_FIELDS = {
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
}


@pytest.fixture
def claude(provider_gateway):
    with anthropic.Anthropic(base_url=provider_gateway.url, api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.mark.parametrize("alias", ["chat", "anthropic", "gemini"])
def test_claude_code_request_shape(claude, alias, fakes, upstream):
    message = claude.beta.messages.create(
        model=alias,
        max_tokens=300,
        betas=BETAS,
        thinking={"type": "adaptive"},
        extra_body=CLAUDE_CODE_FIELDS,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "hello there"},
            {"role": "system", "content": "The user prefers short answers."},
            {"role": "user", "content": "again"},
        ],
    )
    # Gemini merges the two user turns once the system message between them joins systemInstruction
    assert message.content[-1].type == "text" and message.content[-1].text.endswith("again")
    if alias == "anthropic":  # passed as it came: betas, cache_control, the Anthropic-only fields
        seen = fakes.anthropic.state.requests[-1]
        assert seen.headers["anthropic-beta"] == ",".join(BETAS)
        assert seen.body["context_management"] == CLAUDE_CODE_FIELDS["context_management"]
        assert seen.body["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert message.content[0].type == "thinking" and message.content[0].signature == SIGNATURE
    if alias == "chat":  # the system message stays in place; Anthropic-only fields are left out
        sent = upstream[1].requests[-1].body
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "system", "user"]
        assert "context_management" not in sent and "output_config" not in sent


def test_thinking_signature_round_trips_to_anthropic(claude):
    request = {
        "model": "anthropic",
        "max_tokens": 3000,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    first = claude.messages.create(**request, messages=[{"role": "user", "content": "hi"}])
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.signature == SIGNATURE
    with claude.messages.stream(
        **request,
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": "more"},
        ],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].signature == SIGNATURE
    assert final.content[-1].text == "Echo: more"


def test_thinking_budget_becomes_reasoning_effort(claude, upstream):
    claude.messages.create(
        model="chat",
        max_tokens=3000,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert upstream[1].requests[-1].body["reasoning_effort"] == "low"


@pytest.mark.parametrize(("alias", "how"), [("anthropic", "exact"), ("chat", "estimated")])
def test_count_tokens(provider_gateway, alias, how):
    answer = httpx.post(
        f"{provider_gateway.url}/v1/messages/count_tokens",
        timeout=20,
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": alias, "messages": [{"role": "user", "content": "count these words"}]},
    )
    assert answer.status_code == 200 and answer.headers["x-gateway-token-count"] == how
    assert answer.json()["input_tokens"] > 0
    with anthropic.Anthropic(base_url=provider_gateway.url, api_key=KEY, max_retries=0, timeout=20) as c:
        counted = c.messages.count_tokens(
            model=alias, messages=[{"role": "user", "content": "count these words"}]
        )
    assert counted.input_tokens == answer.json()["input_tokens"]


def test_server_tools_are_named_not_refused(claude, provider_gateway):
    answer = httpx.post(
        f"{provider_gateway.url}/v1/messages",
        timeout=20,
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={
            "model": "chat",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
    )
    assert answer.status_code == 200 and answer.headers["x-gateway-dropped-tools"] == "web_search"


def test_base_url_answers_head_and_get(provider_gateway):
    assert httpx.head(provider_gateway.url + "/", timeout=5).status_code == 200
    assert httpx.get(provider_gateway.url + "/", timeout=5).status_code == 200
