"""``/v1/responses`` batch lines: made ready as a live ``/v1/responses`` request is (native in front of OpenAI
deployments, translated from the chat shape in front of any other), answered with OpenAI's Response object."""

from __future__ import annotations

import openai
import orjson
import pytest

from .conftest import alias, jsonl, read_lines, upload, wait_for


def _line(custom_id: str, model: str, text: str, **extra: object) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": model, "input": text, "max_output_tokens": 32, **extra},
    }


@pytest.fixture
def client(upstream, client_with):
    return client_with(alias("native", "openai", "gpt-fake", f"{upstream[0].url}/v1"))


def test_responses_lines_answer_as_live_requests_do(client, upstream):
    lines = [
        _line("translated", "chat", "hello there"),
        _line("native", "native", "hi native"),
        _line("unstored", "chat", "forget me", store=False),
        _line("continued", "chat", "and then?", previous_response_id="resp_unknown"),
    ]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/responses", completion_window="24h"
    )
    assert batch.endpoint == "/v1/responses"
    done = wait_for(client, batch.id)
    assert done.status == "completed", done.errors
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    output = {line["custom_id"]: line for line in read_lines(client, done.output_file_id)}
    assert list(output) == ["translated", "native", "unstored"]
    live = client.responses.with_raw_response.create(model="chat", input="hello there", max_output_tokens=32)
    live = orjson.loads(live.content)
    for custom_id, said in (
        ("translated", "hello there"),
        ("native", "hi native"),
        ("unstored", "forget me"),
    ):
        answer = output[custom_id]["response"]
        assert answer["status_code"] == 200
        body = answer["body"]
        assert (
            body["object"] == "response" and body["id"].startswith("resp") and body["status"] == "completed"
        )
        text = "".join(
            part["text"]
            for item in body["output"]
            if item["type"] == "message"
            for part in item["content"]
            if part["type"] == "output_text"
        )
        assert said in text
        assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    # the translated line has the live response's shape, field for field
    assert set(output["translated"]["response"]["body"]) == set(live)
    # kept for the tenant as a live response is, unless the line said store: false
    kept = client.responses.retrieve(output["translated"]["response"]["body"]["id"])
    assert kept.output_text == output["translated"]["response"]["body"]["output"][0]["content"][0]["text"]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(output["unstored"]["response"]["body"]["id"])
    # a line continuing from an unknown response is that line's error, as the live request's 404
    [error] = read_lines(client, done.error_file_id)
    assert error["custom_id"] == "continued" and error["response"]["status_code"] == 404
    assert error["response"]["body"]["error"]["param"] == "previous_response_id"
    # the native alias went upstream as a Responses request, the others in the chat shape
    paths = [s.path for s in upstream[1].requests]
    assert paths.count("/v1/responses") == 1 and paths.count("/v1/chat/completions") == 3


def test_a_responses_line_is_checked_at_validation(client):
    lines = [
        _line("a", "chat", "fine"),
        {**_line("b", "chat", "x"), "body": {"model": "chat", "input": 7}},
        {**_line("c", "chat", "x"), "url": "/v1/chat/completions"},
    ]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/responses", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    assert done.status == "failed"
    assert [(e.line, e.param) for e in done.errors.data] == [(2, "input"), (3, "url")]
