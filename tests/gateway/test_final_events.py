"""A Responses or Messages stream ends for the gateway once its final event (``response.completed``,
``message_stop``) went out, not when the upstream closes its connection: the SDKs, Codex CLI and Claude Code
may close as soon as they read it, while the upstream keeps its own open a moment longer. The answer was
whole: recorded 200 with its tokens, stored (a response) and cached, passed through or translated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.cache.conftest import settle
from tests.conftest import KEY, log_line
from tests.fakes.openai_upstream import FakeState
from tests.fakes.providers import fakes
from tests.gateway.test_native_cache import gw  # ``native`` (OpenAI) and ``claude`` (Anthropic), cache on

__all__ = ["fakes", "gw"]


@pytest.fixture
def lingering(fakes, upstream) -> Iterator[None]:
    """Every fake upstream keeps a stream's connection open after its last event, until the test is done."""
    states: list[FakeState] = [upstream[1], fakes.anthropic.state]
    for state in states:
        state.linger = True
    yield
    for state in states:
        state.release.set()


def assert_whole(request_id: str) -> None:
    # read while the upstream still holds its connection open: the gateway did not wait for it
    line = log_line(request_id)
    assert (line["status"], line.get("error")) == (200, None)
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0


@pytest.mark.parametrize("alias", ["native", "chat"])  # passed through; translated from a chat upstream
def test_a_responses_client_that_closes_at_the_final_event_had_the_whole_answer(gw, lingering, alias):
    asked: Any = {"model": alias, "input": "all of it", "temperature": 0}
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        raw = client.responses.with_raw_response.create(stream=True, **asked)
        with raw.parse() as events:
            for event in events:
                if event.type == "response.completed":
                    final = event.response
                    break  # and the connection is closed, as Codex CLI closes it
        assert final.output_text == "Echo: all of it"
        assert_whole(raw.headers["x-request-id"])
        assert client.responses.retrieve(final.id).output_text == "Echo: all of it"
        settle(gw)
        again = client.responses.with_raw_response.create(**asked)
    assert again.headers["x-cache"] == "hit-exact"
    assert again.parse().output_text == "Echo: all of it"


@pytest.mark.parametrize("alias", ["claude", "chat"])  # passed through; translated from a chat upstream
def test_a_messages_client_that_closes_at_message_stop_had_the_whole_answer(gw, lingering, alias):
    asked: Any = {
        "model": alias,
        "max_tokens": 100,
        "extra_body": {"temperature": 0},
        "messages": [{"role": "user", "content": "all of it"}],
    }
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0, timeout=20) as claude:
        raw = claude.messages.with_raw_response.create(stream=True, **asked)
        text = ""
        with raw.parse() as events:
            for event in events:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text += event.delta.text
                if event.type == "message_stop":
                    break  # and the connection is closed, as Claude Code closes it
        assert text == "Echo: all of it"
        assert_whole(raw.headers["x-request-id"])
        settle(gw)
        again = claude.messages.with_raw_response.create(**asked)
    assert again.headers["x-cache"] == "hit-exact"
    assert again.parse().content[0].text == "Echo: all of it"
