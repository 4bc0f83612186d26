"""Streams are relayed as they come and a client that leaves cancels the upstream request."""

from __future__ import annotations

import re
import socket
import time

import httpx
import openai
import orjson

from tests.conftest import KEY, log_line
from tests.fakes.openai_upstream import SLOW_CHUNK_DELAY_S, SLOW_CHUNKS
from tests.wait import wait_for


def test_chunks_are_relayed_as_they_arrive_not_buffered(gateway, upstream):
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    arrivals: list[float] = []
    upstream_done_at_first: int | None = None
    started = time.perf_counter()
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=20,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and re.search(r'"content":" ?w\d', line):
                if not arrivals:
                    upstream_done_at_first = upstream[1].completed_streams
                arrivals.append(time.perf_counter() - started)
    assert len(arrivals) == SLOW_CHUNKS
    # the first word reached the client while the upstream was still producing the rest (however busy the
    # machine: a cause, not a duration), and the words came spread as the upstream sent them
    assert upstream_done_at_first == 0
    assert arrivals[-1] - arrivals[0] >= SLOW_CHUNK_DELAY_S * (SLOW_CHUNKS - 2)


def test_client_disconnect_cancels_the_upstream_request(gateway, upstream):
    state = upstream[1]
    body = orjson.dumps({"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        assert b"200 OK" in sock.recv(65536)  # headers (and perhaps a first chunk) came back
    wait_for(lambda: state.cancelled or state.completed_streams, what="the upstream stream to end")
    assert state.cancelled == 1
    assert state.completed_streams == 0


def test_a_client_that_closes_at_done_had_the_whole_answer(gateway, upstream):
    """The SDKs close the connection as soon as they read [DONE], while the upstream may keep its own open a
    moment longer: the gateway then ends a stream whose client is gone. The answer was whole: 200."""
    state = upstream[1]
    state.linger = True
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat", stream=True, messages=[{"role": "user", "content": "all of it"}]
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Echo: all of it"  # the SDK read [DONE] and closed
    try:
        line = log_line(raw.headers["x-request-id"])  # written while the upstream still holds its stream open
    finally:
        state.release.set()
    assert (line["status"], line.get("error")) == (200, None)
    assert line["completion_tokens"] > 0
