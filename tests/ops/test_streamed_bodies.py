"""A streamed answer's response body in the request log: the object the same request without ``stream`` would
have answered (chat, Responses, Messages), what went out of a stream that broke off, masked, sealed and cut
like a whole answer's body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.streambody import ChatBody
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY
from tests.fakes import anthropic_upstream
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread
from tests.ops.gateway_process import poll
from tests.ops.test_requestlog import EMAIL, bodies_config, one_request, requests_of, stored_bodies

CAP = 3000


@pytest.fixture
def claude_fake() -> Iterator[ServerThread]:
    server = ServerThread(lambda: anthropic_upstream.build_app(FakeState(api_key=UPSTREAM_KEY))).start()
    yield server
    server.stop()


@pytest.fixture
def logging_gateway(upstream, claude_fake, start_gateway, tmp_path):
    """Bodies logged for every tenant, acme's PII masked in the log, sealed at rest, cut to ``CAP``; the alias
    ``cut`` is a stream whose upstream breaks off after two words; ``native`` and ``claude`` pass OpenAI's
    Responses and Anthropic's Messages streams through as they come (``chat`` is translated)."""
    store = f"store: sqlite\n  path: {tmp_path / 'requests.db'}"
    aliases = {
        "cut": ("openai-compatible", "cut-stream", upstream[0].url),
        "native": ("openai", "gpt-fake", upstream[0].url),
        "claude": ("anthropic", "claude-fake", claude_fake.url),
    }
    models = "\n".join(
        f"""  - name: {alias}
    deployments:
      - provider: {provider}
        model: {model}
        api_base: {url}/v1
        api_key: {UPSTREAM_KEY}"""
        for alias, (provider, model, url) in aliases.items()
    )
    return start_gateway(bodies_config(upstream[0].url, store, tmp_path, CAP, models)), store


def logged_answer(gateway, request_id: str) -> dict[str, Any]:
    """The stored response body of the request, parsed, once its record is written."""
    poll(lambda: requests_of(gateway, request_id=request_id).json()["data"], "the record")
    row = one_request(gateway, request_id).json()
    assert row["stream"] is True
    return json.loads(row["response_body"])


def test_a_streamed_chat_answer_is_logged_as_the_completion_it_makes(logging_gateway):
    gateway, _ = logging_gateway
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=[{"role": "user", "content": "three little words"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text == "Echo: three little words" and usage is not None

    logged = logged_answer(gateway, raw.headers["x-request-id"])
    assert logged["object"] == "chat.completion" and logged["id"] == chunks[0].id
    [choice] = logged["choices"]
    assert choice["message"] == {"role": "assistant", "content": text}
    assert choice["finish_reason"] == "stop"
    assert logged["usage"]["completion_tokens"] == usage.completion_tokens
    assert logged["usage"]["prompt_tokens"] == usage.prompt_tokens


def test_a_streamed_legacy_completion_is_logged_as_the_text_completion_it_makes(logging_gateway):
    gateway, _ = logging_gateway
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as client:
        raw = client.completions.with_raw_response.create(model="chat", prompt="old style", stream=True)
        text = "".join(c.choices[0].text for c in raw.parse() if c.choices)
    assert text == "Echo: old style "

    logged = logged_answer(gateway, raw.headers["x-request-id"])
    assert logged["object"] == "text_completion" and logged["id"] == "cmpl-fake"
    assert logged["choices"] == [{"index": 0, "text": text, "finish_reason": None}]


@pytest.mark.parametrize("alias", ["chat", "native"])
def test_a_streamed_responses_answer_is_logged_as_its_final_response(logging_gateway, alias):
    gateway, _ = logging_gateway
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as client:
        raw = client.responses.with_raw_response.create(model=alias, input="two words", stream=True)
        events = list(raw.parse())
    final = next(e.response for e in events if e.type == "response.completed")
    assert "two words" in final.output_text

    logged = logged_answer(gateway, raw.headers["x-request-id"])
    assert logged == final.model_dump(mode="json", exclude_unset=True)
    assert logged["object"] == "response" and logged["status"] == "completed"
    [message] = [item for item in logged["output"] if item["type"] == "message"]
    assert message["content"][0]["text"] == final.output_text


@pytest.mark.parametrize("alias", ["chat", "claude"])
def test_a_streamed_messages_answer_is_logged_as_the_message_it_makes(logging_gateway, alias):
    gateway, _ = logging_gateway
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key=OTHER_KEY, max_retries=0, timeout=20) as claude,
        claude.messages.stream(
            model=alias, max_tokens=50, messages=[{"role": "user", "content": "hello there"}]
        ) as stream,
    ):
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert final.content[0].type == "text" and final.content[0].text == "Echo: hello there"

    logged = logged_answer(gateway, request_id)
    assert logged["type"] == "message" and logged["id"] == final.id and logged["model"] == alias
    assert logged["content"] == [{"type": "text", "text": "Echo: hello there"}]
    assert logged["stop_reason"] == final.stop_reason == "end_turn"
    assert logged["usage"]["output_tokens"] == final.usage.output_tokens
    assert logged["usage"]["input_tokens"] == final.usage.input_tokens


def test_a_stream_that_broke_off_logs_what_was_relayed(logging_gateway):
    gateway, _ = logging_gateway
    got = []
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="cut", messages=[{"role": "user", "content": "one two three four"}], stream=True
        )
        with pytest.raises(openai.APIError):
            for chunk in raw.parse():
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "Echo: one"  # the upstream broke off after two words

    request_id = raw.headers["x-request-id"]
    logged = logged_answer(gateway, request_id)
    [choice] = logged["choices"]
    assert choice["message"]["content"] == "Echo: one" and choice["finish_reason"] is None
    assert logged["error"]["message"]  # the error event the client got
    [row] = requests_of(gateway, request_id=request_id).json()["data"]
    assert row["status"] >= 500 and row["error"]


def test_a_stream_the_client_left_logs_what_was_relayed(logging_gateway, upstream):
    gateway, _ = logging_gateway
    state = upstream[1]
    state.hold_after = 2  # the role chunk and "Echo:" go out, then the upstream waits
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "left early"}], "stream": True},
        headers={"Authorization": f"Bearer {OTHER_KEY}"},
        timeout=20,
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if '"Echo:"' in line:
                break  # the client goes away here
    # the gateway cancels the request when its client goes away; the upstream is still held
    [row] = poll(lambda: requests_of(gateway, request_id=request_id).json()["data"], "the record")
    state.release.set()
    logged = json.loads(one_request(gateway, request_id).json()["response_body"])
    [choice] = logged["choices"]
    assert choice["message"]["content"] == "Echo:" and choice["finish_reason"] is None
    assert row["stream"] is True and row["status"] == 499


def test_a_streamed_body_is_masked_and_sealed_like_a_whole_one(logging_gateway):
    gateway, store = logging_gateway
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": f"mail {EMAIL} today"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert EMAIL in text  # log_only: the answer itself is untouched

    request_id = raw.headers["x-request-id"]
    logged = logged_answer(gateway, request_id)
    assert logged["choices"][0]["message"]["content"] == "Echo: mail [EMAIL_1] today"
    for value in stored_bodies(store, request_id):
        assert value.startswith("gwenc1.k1.") and "mail" not in value and EMAIL not in value


def test_a_long_stream_is_cut_to_the_cap_and_its_fold_stays_bounded(logging_gateway):
    gateway, _ = logging_gateway
    words = " ".join(f"{i:03d}" + "x" * 96 for i in range(60))  # 6,000 characters echoed back
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": words}], "stream": True},
        headers={"Authorization": f"Bearer {OTHER_KEY}"},
        timeout=20,
    ) as response:
        relayed = b"".join(response.iter_bytes())
        request_id = response.headers["x-request-id"]
    assert relayed.endswith(b"data: [DONE]\n\n") and b"059" + b"x" * 96 in relayed  # the client got it all

    poll(lambda: requests_of(gateway, request_id=request_id).json()["data"], "the record")
    stored = one_request(gateway, request_id).json()["response_body"]
    assert stored.endswith(" [cut]") and len(stored.encode()) <= CAP + len(" [cut]")
    assert stored.startswith('{"id":"chatcmpl-fake"') and "000xxx" in stored and "059xxx" not in stored

    # the fold itself keeps no more text than its budget, however long the stream, and still reads the end
    fold = ChatBody(room=1000)
    piece = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "y" * 100}}],
    }
    for _ in range(10_000):
        fold.feed(b"data: " + json.dumps(piece).encode() + b"\n\n")
    end = {
        "id": "c",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
        "usage": {"total_tokens": 7},
    }
    fold.feed(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
    whole = fold.whole()
    assert whole is not None
    assert len(whole["choices"][0]["message"]["content"]) == 1000
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"] == {"total_tokens": 7}
