"""Admission's token estimate for requests passed through in their own format (``/v1/responses`` to an
OpenAI deployment, ``/v1/messages`` to an Anthropic one): the prompt in their items and blocks and the
completion they reserve count against a tenant's token bucket as a chat request's would."""

from __future__ import annotations

import anthropic
import openai
import pytest

from gateway.auth import hash_key
from tests.conftest import KEY, UPSTREAM_KEY
from tests.fakes.providers import deployment, fakes

__all__ = ["fakes"]
LONG = "word " * 400  # about 500 tokens: more than the bucket holds


@pytest.fixture
def gateway(fakes, upstream, start_gateway):
    return start_gateway(f"""
policies:
  max_wait_s: 0
models:
  - name: native
    deployments:
      - {{provider: openai, model: gpt-fake, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY}}}
  - name: claude
    deployments:
      - {deployment("anthropic", fakes, "claude-3-5-sonnet-20241022")}
tenants:
  - name: acme
    keys: ["{hash_key(KEY)}"]
    limits: {{tpm: 200}}
""")


def test_responses_items_and_max_output_tokens_are_estimated(gateway, upstream):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        small = client.responses.create(
            model="native", input=[{"role": "user", "content": "hi"}], max_output_tokens=20
        )
        assert small.status == "completed"
        calls = len(upstream[1].requests)
        for too_large in (
            {
                "input": [{"role": "user", "content": [{"type": "input_text", "text": LONG}]}],
                "max_output_tokens": 20,
            },
            {"input": "hi", "instructions": LONG, "max_output_tokens": 20},
            {
                "input": [{"type": "function_call_output", "call_id": "c1", "output": LONG}],
                "max_output_tokens": 20,
            },
            {"input": "hi", "max_output_tokens": 500},
        ):
            with pytest.raises(openai.RateLimitError) as refused:
                client.responses.create(model="native", **too_large)  # type: ignore[call-overload]
            assert "Request too large" in refused.value.message
        assert len(upstream[1].requests) == calls  # refused before any upstream call


def test_messages_blocks_are_estimated(gateway, fakes):
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0, timeout=20) as claude:
        assert claude.messages.create(
            model="claude", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
        calls = len(fakes.anthropic.state.requests)
        for messages in (
            [{"role": "user", "content": [{"type": "text", "text": LONG}]}],
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {"path": LONG}}],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
            ],
        ):
            with pytest.raises(anthropic.RateLimitError) as refused:
                claude.messages.create(model="claude", max_tokens=20, messages=messages)  # type: ignore[arg-type]
            assert "Request too large" in str(refused.value)
        assert len(fakes.anthropic.state.requests) == calls
