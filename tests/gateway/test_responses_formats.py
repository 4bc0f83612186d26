"""``/v1/responses`` with the official openai SDK: an Azure deployment passed through natively (Azure's path,
api-version and api-key header), ``text.format`` structured outputs and ``input_image`` parts translated to
chat completions and to Anthropic, and an upstream stream that breaks mid-answer ending in a spec-valid
``response.failed`` with the request ledgered once."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from backends import sse
from backends.openai import AZURE_RESPONSES_API_VERSION
from tests.conftest import KEY, UPSTREAM_KEY, config_text
from tests.fakes.providers import fakes, provider_models
from tests.openapi import validate
from tests.policies.conftest import policy_config, settled, usage

__all__ = ["fakes"]

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
FORMAT: Any = {"format": {"type": "json_schema", "name": "place", "schema": SCHEMA, "strict": True}}


@pytest.fixture
def gw(fakes, upstream, start_gateway):
    azure = f"""  - name: azure
    deployments:
      - provider: azure
        model: my-gpt5
        api_base: {upstream[0].url}
        api_key: {UPSTREAM_KEY}
        api_version: "2024-10-21"  # date-ok: Azure's chat api-version, older than Responses
"""
    return start_gateway(config_text(upstream[0].url, azure + provider_models(fakes)))


@pytest.fixture
def client(gw):
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.mark.parametrize("stream", [False, True])
def test_azure_serves_the_responses_api_natively(client, upstream, stream):
    if stream:
        with client.responses.stream(model="azure", input="hello azure") as events:
            kinds = [event.type for event in events]
            answer = events.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    else:
        answer = client.responses.create(model="azure", input="hello azure")
    assert answer.output_text == "Echo: hello azure" and answer.model == "my-gpt5"
    seen = upstream[1].requests[-1]
    assert seen.path == "/openai/responses"  # Azure's Responses API is per resource, not per deployment
    assert seen.query == {"api-version": AZURE_RESPONSES_API_VERSION}
    assert seen.headers["api-key"] == UPSTREAM_KEY and "Authorization" not in seen.headers
    assert seen.body["model"] == "my-gpt5" and seen.body["input"] == "hello azure"
    assert seen.body.get("stream", False) is stream


def test_json_schema_format_becomes_chats_response_format(client, upstream):
    answer = client.responses.create(model="chat", input="where?", text=FORMAT)
    assert answer.status == "completed"
    assert upstream[1].requests[-1].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": SCHEMA, "strict": True},
    }
    client.responses.create(model="chat", input="where?", text={"format": {"type": "json_object"}})
    assert upstream[1].requests[-1].body["response_format"] == {"type": "json_object"}


def test_json_schema_format_becomes_anthropics_output_config(client, fakes):
    answer = client.responses.create(model="anthropic", input="where?", text=FORMAT, max_output_tokens=100)
    assert answer.status == "completed"
    body = fakes["anthropic"].state.requests[-1].body
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "tools" not in body  # structured output, not a forced tool


IMAGES: Any = [
    {"type": "input_text", "text": "what is this?"},
    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
    {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "low"},
]


@pytest.mark.parametrize("stream", [False, True])
def test_input_images_reach_a_chat_upstream_as_image_parts(client, upstream, stream):
    asked: Any = {"model": "chat", "input": [{"role": "user", "content": IMAGES}]}
    if stream:
        with client.responses.stream(**asked) as events:
            answer = events.get_final_response()
    else:
        answer = client.responses.create(**asked)
    assert answer.status == "completed"
    assert upstream[1].requests[-1].body["messages"][-1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "auto"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]


def test_input_images_reach_anthropic_as_image_blocks(client, fakes):
    answer = client.responses.create(
        model="anthropic", input=[{"role": "user", "content": IMAGES}], max_output_tokens=100
    )
    assert answer.output_text == "Echo: [image/png] [https://example.com/cat.jpg] what is this?"
    blocks = fakes["anthropic"].state.requests[-1].body["messages"][-1]["content"]
    assert blocks == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_an_image_by_file_id_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError, match="file ids are not supported"):
        client.responses.create(
            model="chat",
            input=[
                {
                    "role": "user",
                    "content": [{"type": "input_image", "file_id": "file-123", "detail": "auto"}],
                }
            ],
        )


# --- an upstream stream that breaks ----------------------------------------------------------------------


@pytest.fixture
def ledgered(upstream, start_gateway, stores_yaml):
    cut = f"""  - name: cut
    deployments:
      - provider: openai-compatible
        model: cut-stream
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}
        price: {{input: 1.0, output: 2.0}}
"""
    text = policy_config(upstream[0].url, stores=stores_yaml).replace("tenants:\n", cut + "tenants:\n", 1)
    return start_gateway(text)


def test_a_broken_upstream_stream_ends_in_response_failed(ledgered):
    decoder = sse.Decoder()
    events = []
    with httpx.stream(
        "POST",
        f"{ledgered.url}/v1/responses",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=20,
        json={"model": "cut", "input": "one two three four", "stream": True},
    ) as raw:
        assert raw.status_code == 200
        request_id = raw.headers["x-request-id"]
        for piece in raw.iter_bytes():
            events += decoder.feed(piece)
    data = [json.loads(e.data) for e in events]
    kinds = [d["type"] for d in data]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds  # the first words got through
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    for d in data:
        validate("ResponseStreamEvent", d)
    failed = data[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"]
    with openai.OpenAI(base_url=ledgered.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        seen = list(client.responses.create(model="cut", input="one two three four", stream=True))
    assert [type(e).__name__ for e in seen[-2:]] == ["ResponseErrorEvent", "ResponseFailedEvent"]
    assert seen[-1].response.status == "failed"  # type: ignore[union-attr]
    settled(ledgered)
    records = [
        r
        for r in usage(ledgered, tenant="acme", group_by="request").json()["data"]
        if r["request_id"] == request_id
    ]
    assert len(records) == 1  # once, whatever the two failure paths (the writer's, the relay's) saw
    [record] = records
    assert record["alias"] == "cut" and record["status"] == 502
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] > 0  # what was streamed is billed
