"""PII per tenant through real HTTP: masked before the upstream sees it and restored in the answer (streams
included), blocked, or only kept out of the log; custom rules and word lists; a guardrail that asks a
moderation alias through the gateway itself."""

from __future__ import annotations

import asyncio
import json

import anthropic
import httpx
import openai
import orjson
import pytest

from backends import UpstreamResponse, sse
from gateway.security.config import PIIConfig
from gateway.security.pii import Detector
from gateway.security.privacy import Masker, restored
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY, config_text
from tests.security.serve import error_of

SECRET_TEXT = "mail jane.doe@example.com card 4111 1111 1111 1111 ref PRJ-0042 falcon"


def _with_pii(upstream_url: str, pii: str, extra_models: str = "") -> str:
    text = config_text(upstream_url, extra_models)
    return text.replace('    models: ["chat", "embed"', f'    pii: {pii}\n    models: ["chat", "embed"', 1)


def _seen_text(upstream) -> str:
    return json.dumps(upstream[1].requests[-1].body)


def test_mask_hides_pii_from_the_upstream_and_restores_it_in_the_answer(start_gateway, upstream):
    pii = '{mode: mask, rules: {project: "PRJ-\\\\d{4}"}, words: [Falcon]}'
    gateway = start_gateway(_with_pii(upstream[0].url, pii))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        answer = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": SECRET_TEXT}]
        )
        seen = _seen_text(upstream)
        for value in ("jane.doe@example.com", "4111 1111 1111 1111", "PRJ-0042", "falcon"):
            assert value not in seen
        assert (
            "[EMAIL_1]" in seen and "[CREDIT_CARD_1]" in seen and "[PROJECT_1]" in seen and "[WORD_1]" in seen
        )
        assert answer.choices[0].message.content == "Echo: " + SECRET_TEXT  # the fake echoes what it saw
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="chat", stream=True, messages=[{"role": "user", "content": SECRET_TEXT}]
            )
            if chunk.choices
        )
        assert streamed == "Echo: " + SECRET_TEXT
        completion = client.completions.create(model="chat", prompt="ssn 078-05-1120 please")
        assert "078-05-1120" not in _seen_text(upstream) and "078-05-1120" in completion.choices[0].text
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as claude:
        message = claude.messages.create(
            model="chat", max_tokens=20, messages=[{"role": "user", "content": "call +44 20 7946 0958"}]
        )
    assert "+44 20 7946 0958" not in _seen_text(upstream)
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock) and block.text == "Echo: call +44 20 7946 0958"


def test_block_refuses_pii_and_passes_the_rest(start_gateway, upstream):
    gateway = start_gateway(_with_pii(upstream[0].url, "{mode: block}"))
    before = len(upstream[1].requests)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": SECRET_TEXT}])
        assert error_of(refused)["code"] == "pii_detected"
        assert "credit_card" in error_of(refused)["message"] and "4111" not in error_of(refused)["message"]
        assert len(upstream[1].requests) == before
        assert client.embeddings.create(model="embed", input="no personal data here").data
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as other:  # no policy
        assert other.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": SECRET_TEXT}]
        )


def test_log_only_sends_as_is_and_masks_the_logged_prompt(tmp_path, upstream):
    from tests.security.serve import serving

    config = _with_pii(upstream[0].url, "{mode: log_only}").replace(
        "  log_requests: true", "  log_requests: true\n  log_prompts: true"
    )
    with serving(tmp_path, config) as (url, stdout):
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as client:
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": SECRET_TEXT}])
        assert "jane.doe@example.com" in _seen_text(upstream)
    log = stdout.read_text()
    assert "[EMAIL_1]" in log and "jane.doe@example.com" not in log and "4111 1111 1111 1111" not in log


def test_a_placeholder_split_across_stream_events_is_restored_whole():
    masker = Masker(Detector())
    masked = masker.mask("write to a@example.com now")
    assert masked == "write to [EMAIL_1] now"

    def event(content: str | None, finish: str | None = None) -> bytes:
        delta = {} if content is None else {"content": content}
        return sse.data(orjson.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))

    async def chunks():
        for piece in ("Sent to [EM", "AIL", "_1", "] ok", " [EMAI"):
            yield event(piece)
        yield event(None, "stop")[:20]  # an event split mid-JSON as well
        yield event(None, "stop")[20:] + sse.DONE

    async def collect() -> str:
        answer = restored(UpstreamResponse(status=200, chunks=chunks()), masker)
        assert answer.chunks is not None
        out = b"".join([piece async for piece in answer.chunks])
        texts = [
            orjson.loads(e.data)["choices"][0]["delta"].get("content", "")
            for e in sse.Decoder().feed(out)
            if not e.done
        ]
        return "".join(texts)

    assert asyncio.run(collect()) == "Sent to a@example.com ok [EMAI"


def test_a_guardrail_asks_a_moderation_alias_through_the_gateway(start_gateway, upstream):
    guard = f"""  - name: moderation
    deployments:
      - {{provider: openai-compatible, model: fake-model, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY}}}"""
    text = config_text(upstream[0].url, guard).replace(
        '    models: ["chat", "embed"',
        '    guardrail: {alias: moderation, on: both, block_if: "(?i)forbidden"}\n'
        '    models: ["chat", "embed"',
        1,
    )
    gateway = start_gateway(text)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        before = len(upstream[1].requests)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "a forbidden topic"}]
            )
        assert error_of(refused)["code"] == "content_policy_violation"
        assert [r.body["model"] for r in upstream[1].requests[before:]] == [
            "fake-model"
        ]  # only the moderation call
        ok = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "a fine topic"}]
        )
        assert ok.choices[0].message.content == "Echo: a fine topic"
        assert len(upstream[1].requests) - before == 1 + 3  # input check, answer, output check
    usage = httpx.get(
        gateway.url + "/admin/usage?group_by=model", headers={"Authorization": f"Bearer {KEY}"}
    ).json()
    assert "moderation" in {
        row.get("model") or row.get("alias") for row in usage["data"]
    }  # billed to the tenant


def test_invalid_custom_rules_are_config_errors():
    with pytest.raises(ValueError, match=r"rules\.bad: not a valid regular expression"):
        PIIConfig(mode="mask", rules={"bad": "(unclosed"})
