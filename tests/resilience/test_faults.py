"""Every fault of the chaos upstream, streaming and not: the client gets the fallback's answer, or a clean
OpenAI-format error, within the deadline; the worker stays healthy."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import KEY, log_line
from tests.fakes.chaos_upstream import Fault
from tests.openapi import validate
from tests.resilience.conftest import alias, chat, config, dep

DEADLINE_S = 6.0
FAULTS = {
    "status_500": Fault("status", status=500),
    "status_429_retry_after": Fault("status", status=429, retry_after="0.2"),
    "slow_first_token": Fault("slow_first_token", delay_s=2.5),
    "hang": Fault("hang"),
    "reset": Fault("reset"),
    "cut_stream": Fault("cut_stream"),
    "bad_json": Fault("bad_json"),
    "wrong_content_type": Fault("wrong_content_type"),
    "error_body_200": Fault("error_body_200"),
}
# the bad deployment gives up on a slow first token / a hang well inside the deadline
BAD_TIMEOUTS = {"ttft_s": 0.4, "attempt_s": 1.0, "read_s": 2}


def _gateway(chaos, start_gateway, fallback: bool):
    url = chaos[0].url
    aliases = [
        alias(
            "primary",
            dep(url, "bad", timeouts=BAD_TIMEOUTS),
            retry={"attempts": 2},
            **({"fallbacks": [{"alias": "backup"}]} if fallback else {}),
        ),
        alias("backup", dep(url, "good")),
    ]
    return start_gateway(config(*aliases, resilience={"deadline_s": DEADLINE_S}))


def _stream_events(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.split("\n\n") if line.strip()]
    return [json.loads(line.removeprefix("data: ")) for line in lines if line != "data: [DONE]"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fallback_answers_when_the_primary_fails(chaos, start_gateway, fault, stream):
    gateway = _gateway(chaos, start_gateway, fallback=True)
    chaos[1].faults["bad"] = FAULTS[fault]
    started = time.monotonic()
    response = chat(gateway, "primary", "one two three", stream=stream)
    elapsed = time.monotonic() - started
    assert elapsed < DEADLINE_S
    assert chaos[1].requests["bad"] >= 1
    if fault == "cut_stream" and stream:
        # bytes had gone to the client: no retry, the stream ends with an OpenAI error event
        assert response.status_code == 200
        events = _stream_events(response)
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        validate("ErrorResponse", events[-1])
        assert chaos[1].requests["good"] == 0 and chaos[1].requests["bad"] == 1
        return
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-deployment"] == "openai-compatible/good"
    if stream:
        events = _stream_events(response)
        assert (
            "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
            == "Echo: one two three"
        )
    else:
        assert response.json()["choices"][0]["message"]["content"] == "Echo: one two three"
    line = log_line(response.headers["x-request-id"])
    assert line["deployment"] == "openai-compatible/good"
    assert line["attempts"][-1] == "openai-compatible/good:200"
    assert all(a.startswith("openai-compatible/bad:") for a in line["attempts"][:-1])
    assert len(line["attempts"]) >= 2


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_without_a_fallback_the_client_gets_a_clean_openai_error(chaos, start_gateway, fault, stream):
    gateway = _gateway(chaos, start_gateway, fallback=False)
    chaos[1].faults["bad"] = FAULTS[fault]
    started = time.monotonic()
    response = chat(gateway, "primary", "one two three", stream=stream)
    assert time.monotonic() - started < DEADLINE_S
    if fault == "cut_stream" and stream:
        validate("ErrorResponse", _stream_events(response)[-1])
    else:
        assert response.status_code >= 400
        validate("ErrorResponse", response.json())
        assert response.headers["x-request-id"]
        if fault == "status_429_retry_after":
            assert response.status_code == 429 and response.headers["retry-after"] == "0.2"
        if fault in ("slow_first_token", "hang"):
            assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    # the worker is fine afterwards
    chaos[1].faults.clear()
    assert chat(gateway, "primary").status_code == 200


def test_the_openai_sdk_sees_a_normal_answer_through_a_failing_primary(chaos, start_gateway):
    gateway = _gateway(chaos, start_gateway, fallback=True)
    chaos[1].faults["bad"] = Fault("status", status=503)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        completion = client.chat.completions.create(
            model="primary", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "Echo: hi"
        stream = client.chat.completions.create(
            model="primary", stream=True, messages=[{"role": "user", "content": "hi there"}]
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: hi there"
