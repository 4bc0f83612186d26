"""``/v1/responses`` screened for PII like chat and messages (its input items and instructions), and the output
guardrail on streams: text held back and judged a window at a time, an unsafe window ending the stream with the
caller's error event or sent as ``[redacted]``."""

from __future__ import annotations

import json
from typing import Any, cast

import anthropic
import openai
import pytest

from tests.conftest import KEY, UPSTREAM_KEY, config_text
from tests.security.serve import error_of

EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0958"
NATIVE = """  - name: native
    deployments:
      - {{provider: openai, model: gpt-fake, api_base: "{url}/v1", api_key: {key}}}"""


def _tenant_policy(upstream_url: str, policy: str, extra: str = "") -> str:
    text = config_text(upstream_url, NATIVE.format(url=upstream_url, key=UPSTREAM_KEY) + "\n" + extra)
    return text.replace('    models: ["chat", "embed"', f'    {policy}\n    models: ["chat", "embed"', 1)


def _seen(upstream) -> str:
    return json.dumps(upstream[1].requests[-1].body)


@pytest.mark.parametrize("alias", ["native", "chat"])
def test_responses_input_and_instructions_are_masked_and_the_answer_restored(start_gateway, upstream, alias):
    gateway = start_gateway(_tenant_policy(upstream[0].url, "pii: {mode: mask}"))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        response = client.responses.create(
            model=alias,
            instructions=f"Call {PHONE} if stuck.",
            input=[{"role": "user", "content": [{"type": "input_text", "text": f"write to {EMAIL}"}]}],
        )
        seen = _seen(upstream)
        assert EMAIL not in seen and PHONE not in seen and "[EMAIL_1]" in seen and "[PHONE_1]" in seen
        assert EMAIL in response.output_text  # the fake echoes what it saw: restored on the way back
        with client.responses.stream(model=alias, input=f"write to {EMAIL}") as stream:
            deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response()
        assert EMAIL not in _seen(upstream)
        assert EMAIL in deltas and EMAIL in final.output_text and "[EMAIL" not in deltas


def test_responses_with_pii_are_refused_in_openais_format_when_the_tenant_blocks(start_gateway, upstream):
    gateway = start_gateway(_tenant_policy(upstream[0].url, "pii: {mode: block}"))
    before = len(upstream[1].requests)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        for kwargs in ({"input": f"mail {EMAIL}"}, {"input": "hello", "instructions": f"phone {PHONE}"}):
            with pytest.raises(openai.BadRequestError) as refused:
                client.responses.create(model="native", **kwargs)  # type: ignore[call-overload]
            assert error_of(refused)["code"] == "pii_detected" and EMAIL not in str(error_of(refused))
        assert len(upstream[1].requests) == before
        assert client.responses.create(model="native", input="nothing personal").output_text


GUARD = """  - name: moderation
    deployments:
      - {{provider: openai-compatible, model: fake-model, api_base: "{url}/v1", api_key: {key}}}"""


def _guarded(start_gateway, upstream, action: str):
    policy = (
        f'guardrail: {{alias: moderation, on: output, block_if: "(?i)forbidden", stream_window_chars: 20, '
        f"stream_action: {action}}}"
    )
    return start_gateway(
        _tenant_policy(upstream[0].url, policy, GUARD.format(url=upstream[0].url, key=UPSTREAM_KEY))
    )


PROMPT = (
    "a fine opening line then a forbidden word"  # the fake echoes it: "Echo: a fine opening line then ..."
)


def test_an_unsafe_window_ends_a_chat_stream_with_an_error_event(start_gateway, upstream):
    gateway = _guarded(start_gateway, upstream, "end")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        got = []
        with pytest.raises(openai.APIError) as stopped:
            for chunk in client.chat.completions.create(
                model="chat", stream=True, messages=[{"role": "user", "content": PROMPT}]
            ):
                got += [c.delta.content or "" for c in chunk.choices]
        text = "".join(got)
        assert text.startswith("Echo: a fine opening") and "forbidden" not in text  # the safe window went out
        assert "content guardrail" in stopped.value.message
        assert cast("dict[str, Any]", stopped.value.body or {}).get("code") == "content_policy_violation"
        fine = client.chat.completions.create(
            model="chat", stream=True, messages=[{"role": "user", "content": "all fine words here only"}]
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in fine if c.choices)
            == "Echo: all fine words here only"
        )


def test_an_unsafe_window_ends_a_messages_stream_with_anthropics_error_event(start_gateway, upstream):
    gateway = _guarded(start_gateway, upstream, "end")
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as claude:
        texts = []
        with (
            pytest.raises(anthropic.APIStatusError) as stopped,
            claude.messages.stream(
                model="chat", max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
            ) as stream,
        ):
            for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    texts.append(event.delta.text)
        assert "forbidden" not in "".join(texts) and "".join(texts).startswith("Echo: a fine")
        body = stopped.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error" and "guardrail" in body["error"]["message"]


def test_a_word_split_across_two_windows_is_judged_whole(start_gateway, upstream):
    """The secret scrubber may hold back a word's last letters (they could start a secret), so "forbidden"
    can reach the guardrail as " ...forbidde" closing one window and "n word" opening the next: each window
    is judged with the end of the one before it, so the word is seen whole."""
    from errors import secrets

    secrets.register(
        ["n word-and-a-secret-suffix"]
    )  # starts like the answer's "n word": the tail is held back
    gateway = _guarded(start_gateway, upstream, "redact")
    _redacted_chat(gateway)


def test_redact_sends_an_unsafe_window_as_redacted_and_finishes(start_gateway, upstream):
    gateway = _guarded(start_gateway, upstream, "redact")
    chunks = _redacted_chat(gateway)
    assert chunks[-1].choices[0].finish_reason == "stop"
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as claude:
        message = claude.messages.create(
            model="chat", max_tokens=50, stream=True, messages=[{"role": "user", "content": PROMPT}]
        )
        text = "".join(
            e.delta.text for e in message if e.type == "content_block_delta" and e.delta.type == "text_delta"
        )
    assert "forbidden" not in text and "[redacted]" in text


def _redacted_chat(gateway):
    """The chunks of a streamed chat answer whose unsafe window went out as ``[redacted]``."""
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="chat", stream=True, messages=[{"role": "user", "content": PROMPT}]
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "forbidden" not in text and "[redacted]" in text and text.startswith("Echo: a fine opening")
    return chunks
