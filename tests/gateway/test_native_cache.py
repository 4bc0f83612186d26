"""Native Responses and Messages answers (passed through to OpenAI's Responses API and Anthropic's Messages
API) served again by the exact cache, with the official SDKs: the same request of the same tenant is a hit
(``x-cache: hit-exact``, no upstream call), whole or streamed whichever way the first answer came; a
Responses hit is a response of its own (its own id, stored, retrievable)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from backends import sse
from tests.cache.conftest import settle
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY, config_text
from tests.fakes.providers import deployment, fakes
from tests.openapi import validate

__all__ = ["fakes"]


@pytest.fixture
def gw(fakes, upstream, start_gateway):
    extra = f"""  - name: native
    deployments:
      - provider: openai
        model: gpt-fake
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}
  - name: claude
    deployments:
      - {deployment("anthropic", fakes, "claude-3-5-sonnet-20241022")}"""
    return start_gateway(config_text(upstream[0].url, extra) + "cache: {enabled: true}\n")


def responses_calls(upstream) -> int:
    return sum(1 for r in upstream[1].requests if r.path.endswith("/responses"))


def stream_events(gw, body: dict[str, Any], key: str = KEY) -> tuple[list[dict[str, Any]], Any]:
    decoder = sse.Decoder()
    events: list[Any] = []
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/responses",
        headers={"Authorization": f"Bearer {key}"},
        timeout=20,
        json={**body, "stream": True},
    ) as raw:
        assert raw.status_code == 200
        for piece in raw.iter_bytes():
            events += decoder.feed(piece)
        headers = raw.headers
    data = [json.loads(e.data) for e in events]
    assert [e.event for e in events] == [d["type"] for d in data]
    return data, headers


ASKED: Any = {"model": "native", "input": "hello cache", "temperature": 0}


@pytest.mark.parametrize("first_streamed", [False, True])
def test_a_native_responses_answer_is_served_again(gw, upstream, first_streamed):
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        if first_streamed:
            events, headers = stream_events(gw, ASKED)
            first_id, first_text = events[-1]["response"]["id"], "Echo: hello cache"
            assert events[-1]["response"]["output"][0]["content"][0]["text"] == first_text
        else:
            raw = client.responses.with_raw_response.create(**ASKED)
            first = raw.parse()
            first_id, first_text, headers = first.id, first.output_text, raw.headers
        assert headers["x-cache"] == "miss"
        settle(gw)
        raw = client.responses.with_raw_response.create(**ASKED)
        again = raw.parse()
        assert raw.headers["x-cache"] == "hit-exact"
        assert again.output_text == first_text and again.id != first_id
        validate("Response", again.model_dump(mode="json", exclude_unset=True))
        assert client.responses.retrieve(again.id).output_text == first_text  # stored under its own id
        events, headers = stream_events(gw, ASKED)
    assert headers["x-cache"] == "hit-exact"
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        validate("ResponseStreamEvent", event)
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == first_text
    assert responses_calls(upstream) == 1


def test_another_tenant_or_another_input_is_a_miss(gw, upstream):
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        client.responses.create(**ASKED)
        settle(gw)
        other = client.responses.with_raw_response.create(**{**ASKED, "input": "hello other"})
        assert other.headers["x-cache"] == "miss"
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=20) as client:
        assert client.responses.with_raw_response.create(**ASKED).headers["x-cache"] == "miss"
    assert responses_calls(upstream) == 3


def test_a_continuation_is_keyed_on_the_whole_conversation(gw, upstream):
    """``previous_response_id`` is resolved by the gateway into the input sent upstream: two continuations of
    the same conversation are one answer; the same words after another conversation are not."""
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        one = client.responses.create(**ASKED)
        two = client.responses.create(
            **{**ASKED, "input": "another start", "temperature": 0.0, "instructions": "x"}
        )
        settle(gw)
        follow: Any = {"model": "native", "input": "and then?", "temperature": 0}
        first = client.responses.with_raw_response.create(previous_response_id=one.id, **follow)
        settle(gw)
        again = client.responses.with_raw_response.create(previous_response_id=one.id, **follow)
        elsewhere = client.responses.with_raw_response.create(previous_response_id=two.id, **follow)
    assert first.headers["x-cache"] == "miss" and again.headers["x-cache"] == "hit-exact"
    assert elsewhere.headers["x-cache"] == "miss"


MESSAGE: Any = {
    "model": "claude",
    "max_tokens": 100,
    "extra_body": {"temperature": 0},
    "messages": [{"role": "user", "content": "hello cache"}],
}


@pytest.mark.parametrize("first_streamed", [False, True])
def test_a_native_messages_answer_is_served_again(gw, fakes, first_streamed):
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0, timeout=20) as claude:
        if first_streamed:
            with claude.messages.stream(**MESSAGE) as events:
                assert events.response.headers["x-cache"] == "miss"
                first_message = events.get_final_message()
        else:
            raw_first = claude.messages.with_raw_response.create(**MESSAGE)
            assert raw_first.headers["x-cache"] == "miss"
            first_message = raw_first.parse()
        settle(gw)
        raw = claude.messages.with_raw_response.create(**MESSAGE)
        whole = raw.parse()
        assert raw.headers["x-cache"] == "hit-exact"
        with claude.messages.with_streaming_response.create(stream=True, **MESSAGE) as streamed:
            assert streamed.headers["x-cache"] == "hit-exact"
        with claude.messages.stream(**MESSAGE) as events:
            kinds = [event.type for event in events]
            replayed = events.get_final_message()
    assert whole.content[0].text == "Echo: hello cache" == replayed.content[0].text  # type: ignore[union-attr]
    assert first_message.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert (
        whole.model == replayed.model == "claude" and whole.stop_reason == replayed.stop_reason == "end_turn"
    )
    assert whole.usage.output_tokens == replayed.usage.output_tokens
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert sum(1 for r in fakes["anthropic"].state.requests if r.path == "/v1/messages") == 1
