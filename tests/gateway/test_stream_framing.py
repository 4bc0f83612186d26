"""An OpenAI-format stream is relayed event by event and billed from its own usage whatever its SSE framing:
LF, CRLF or CR line ends, ``data:`` with or without its space (all valid; servers built on sse-starlette
send CRLF). The client gets the first text while the upstream still holds the rest at its gate."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import KEY
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread
from tests.held_stream import LINE_ENDS, read_held, text_of
from tests.policies.conftest import policy_config, sdk, settled, usage

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "a b c"}]


@pytest.fixture
def framed_gateway(
    upstream: tuple[ServerThread, FakeState], start_gateway: Callable[[str], ServerThread]
) -> Callable[[bytes, bool], ServerThread]:
    def start(line_end: bytes, data_space: bool) -> ServerThread:
        state = upstream[1]
        state.line_end, state.data_space, state.hold_after = line_end, data_space, 2  # role, then "Echo:"
        return start_gateway(policy_config(upstream[0].url))

    return start


@pytest.mark.parametrize("data_space", [True, False], ids=["data-space", "data-nospace"])
@pytest.mark.parametrize("ending", list(LINE_ENDS))
def test_stream_is_relayed_as_it_comes_and_billed_from_its_usage(
    framed_gateway, upstream, ending: str, data_space: bool
) -> None:
    server = framed_gateway(LINE_ENDS[ending], data_space)
    state = upstream[1]
    with sdk(server, timeout=10) as client:
        chunks = read_held(
            client.chat.completions.create(model="chat", messages=QUESTION, stream=True), state
        )
    assert text_of(chunks) == "Echo: a b c"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # asked upstream by the gateway, not by the client: not shown
    settled(server)
    [record] = usage(server, tenant="acme", group_by="request").json()["data"]
    assert state.usage_sent is not None
    assert state.usage_sent["completion_tokens"] == 4  # "Echo: a b c"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        state.usage_sent["prompt_tokens"],
        state.usage_sent["completion_tokens"],
    )
    assert record["state"] == "settled"  # from the stream's usage, not the estimate


@pytest.mark.parametrize("ending", ["crlf", "cr"])
def test_usage_the_client_asked_for_comes_through_whatever_the_framing(
    framed_gateway, upstream, ending: str
) -> None:
    server = framed_gateway(LINE_ENDS[ending], True)
    state = upstream[1]
    with sdk(server, timeout=10) as client:
        chunks = read_held(
            client.chat.completions.create(
                model="chat", messages=QUESTION, stream=True, stream_options={"include_usage": True}
            ),
            state,
        )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == state.usage_sent
    settled(server)
    [record] = usage(server, tenant="acme", group_by="request").json()["data"]
    assert record["completion_tokens"] == chunks[-1].usage.completion_tokens and record["state"] == "settled"


def test_the_relayed_stream_is_lf_framed_whatever_the_upstream_sent(framed_gateway, upstream) -> None:
    server = framed_gateway(b"\r", False)
    upstream[1].hold_after = None
    body = {"model": "chat", "messages": QUESTION, "stream": True}
    raw = httpx.post(
        server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).content
    assert b"\r" not in raw
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(e.startswith(b"data: {") and b"\n" not in e for e in events[:-2])
