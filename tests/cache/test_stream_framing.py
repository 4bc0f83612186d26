"""A stream from an upstream that frames with CRLF (or CR, or ``data:`` without its space) is stored by the
cache like any other, and replayed from the store as LF-framed SSE, to stream and plain requests alike."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.cache.conftest import ask, client_for, settle
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread
from tests.held_stream import LINE_ENDS, read_held, text_of

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Which river runs through Paris?"}]


@pytest.mark.parametrize("ending", ["crlf", "cr"])
def test_a_stream_in_any_framing_is_stored_and_replayed(
    cached_gateway: Callable[..., ServerThread], upstream: tuple[ServerThread, FakeState], ending: str
) -> None:
    state = upstream[1]
    state.line_end, state.data_space, state.hold_after = LINE_ENDS[ending], False, 2
    server = cached_gateway({"enabled": True})
    with client_for(server) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=QUESTION,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert raw.headers["x-cache"] == "miss"
        live = read_held(raw.parse(), state)
        settle(server)
        replay = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=QUESTION,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert replay.headers["x-cache"] == "hit-exact"
        replayed = list(replay.parse())
        answer, headers = ask(client, "Which river runs through Paris?")
    assert text_of(replayed) == text_of(live) == answer.choices[0].message.content
    assert replayed[-1].usage is not None and state.usage_sent is not None
    assert replayed[-1].usage.model_dump(exclude_none=True) == state.usage_sent
    assert headers["x-cache"] == "hit-exact"
    assert answer.usage is not None and answer.usage.model_dump(exclude_none=True) == state.usage_sent
    assert sum(1 for r in state.requests if r.path.endswith("/chat/completions")) == 1
