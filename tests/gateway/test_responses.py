"""``/v1/responses`` (OpenAI's Responses API) with the official openai SDK: passed through to an OpenAI
deployment, translated for a chat-completions upstream and for the Anthropic, Gemini and Bedrock adapters;
whole and streamed (every event validated against the spec's schemas), stored per tenant, continued with
``previous_response_id``, hosted tools left out and named."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from backends import sse
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY, config_text
from tests.fakes.providers import PROVIDERS, fakes, provider_models
from tests.openapi import validate

__all__ = ["fakes"]

ALIASES = ("native", "chat", *PROVIDERS)
SHELL = {
    "type": "function",
    "name": "exec_command",
    "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
}


@pytest.fixture
def gw(fakes, upstream, start_gateway, monkeypatch):
    from tests.fakes import bedrock_upstream

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", bedrock_upstream.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bedrock_upstream.SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", bedrock_upstream.REGION)
    native = f"""  - name: native
    deployments:
      - provider: openai
        model: gpt-fake
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}
  - name: native-agent
    deployments:
      - provider: openai
        model: agent
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}
  - name: chat-agent
    deployments:
      - provider: openai-compatible
        model: agent
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}"""
    return start_gateway(config_text(upstream[0].url, native + "\n" + provider_models(fakes)))


@pytest.fixture
def client(gw):
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.mark.parametrize("alias", ALIASES)
def test_create_retrieve_delete(client, alias, upstream):
    response = client.responses.create(model=alias, input="hello there", instructions="Be brief.")
    assert response.status == "completed" and response.output_text.endswith("hello there")
    assert response.usage is not None and response.usage.output_tokens > 0
    validate("Response", response.model_dump(mode="json", exclude_unset=True))
    if alias == "native":  # passed through: the upstream saw the Responses request itself
        seen = upstream[1].requests[-1]
        assert seen.path == "/v1/responses" and seen.body["input"] == "hello there"
        assert seen.body["model"] == "gpt-fake"
    assert client.responses.retrieve(response.id).output_text == response.output_text
    items = client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    assert client.responses.delete(response.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


@pytest.mark.parametrize("alias", ALIASES)
def test_stream_events_follow_the_spec(client, gw, alias):
    decoder = sse.Decoder()
    events = []
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/responses",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=20,
        json={"model": alias, "input": "one two three", "stream": True},
    ) as raw:
        for piece in raw.iter_bytes():
            events += decoder.feed(piece)
    data = [json.loads(e.data) for e in events]
    assert [e.event for e in events] == [d["type"] for d in data]
    kinds = [d["type"] for d in data]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.content_part.done" in kinds
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    for d in data:
        validate("ResponseStreamEvent", d)
    with client.responses.stream(model=alias, input="one two three") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "Echo: one two three"
    assert client.responses.retrieve(final.id).output_text == final.output_text


@pytest.mark.parametrize("alias", ["native-agent", "chat-agent"])
@pytest.mark.parametrize("stream", [False, True])
def test_tool_loop_with_previous_response_id(client, alias, stream):
    def create(**kwargs):
        if not stream:
            return client.responses.create(model=alias, tools=[SHELL, {"type": "web_search"}], **kwargs)
        with client.responses.stream(model=alias, tools=[SHELL, {"type": "web_search"}], **kwargs) as s:
            for _ in s:
                pass
            return s.get_final_response()

    first = create(input="List the files.")
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "exec_command" and call.arguments == '{"cmd":"ls"}'
    final = create(
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "a.txt b.txt"}],
    )
    assert final.output_text == "Files: a.txt b.txt"


def test_hosted_tools_are_named_not_refused(gw):
    answer = httpx.post(
        f"{gw.url}/v1/responses",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=20,
        json={"model": "chat", "input": "hi", "tools": [{"type": "web_search"}]},
    )
    assert answer.status_code == 200 and answer.headers["x-gateway-dropped-tools"] == "web_search"


def test_another_tenants_response_is_not_found(client, gw):
    response = client.responses.create(model="chat", input="secret")
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=20) as other:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.create(model="chat", input="more", previous_response_id=response.id)


def test_bad_input_is_a_clear_400(gw):
    answer = httpx.post(
        f"{gw.url}/v1/responses",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=20,
        json={"model": "chat", "input": 42},
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "input"
