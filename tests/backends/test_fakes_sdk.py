"""Each provider fake's answers parse with that provider's official SDK, so the fakes cannot drift from the
real wire format: anthropic, google-genai and boto3 talk to them here exactly as they talk to the real APIs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.conftest import UPSTREAM_KEY
from tests.fakes import bedrock_upstream
from tests.fakes.providers import BEDROCK_MODEL

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def _anthropic(fakes) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fakes.anthropic.url, api_key=UPSTREAM_KEY, max_retries=0, timeout=10)


def test_anthropic_sdk_reads_the_fake_messages(fakes):
    with _anthropic(fakes) as client:
        message = client.messages.create(
            model="claude-3-5-sonnet-20241022",
            max_tokens=100,
            system="Be brief.",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
                        },
                        {"type": "text", "text": "what is this"},
                    ],
                }
            ],
        )
        assert (
            message.content[0].type == "text" and message.content[0].text == "Echo: [image/png] what is this"
        )
        assert message.stop_reason == "end_turn"
        assert message.usage.cache_read_input_tokens == 3 and message.usage.output_tokens == 5

        tool_turn = client.messages.create(
            model="claude-3-5-sonnet-20241022",
            max_tokens=100,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Paris and Rome?"}],
        )
        uses = [b for b in tool_turn.content if b.type == "tool_use"]
        assert [u.input for u in uses] == [{"city": "Paris"}, {"city": "Rome"}]
        assert tool_turn.stop_reason == "tool_use"

        with client.messages.stream(
            model="claude-3-5-sonnet-20241022",
            max_tokens=100,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Paris and Rome?"}],
        ) as stream:
            final = stream.get_final_message()
        assert [b.input for b in final.content if b.type == "tool_use"] == [
            {"city": "Paris"},
            {"city": "Rome"},
        ]
        assert final.usage.output_tokens == tool_turn.usage.output_tokens
        assert final.usage.input_tokens == tool_turn.usage.input_tokens


def test_anthropic_sdk_reads_the_fake_errors(fakes):
    with _anthropic(fakes) as client:
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.create(
                model="error-429", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert limited.value.response.headers["retry-after"] == "7"
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            client.messages.create(
                model="error-529", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert overloaded.value.status_code == 529
        with pytest.raises(anthropic.APIStatusError) as mid_stream:
            with client.messages.stream(
                model="stream-error", max_tokens=10, messages=[{"role": "user", "content": "a b"}]
            ) as stream:
                stream.get_final_message()
        assert "Overloaded" in str(mid_stream.value)
        with pytest.raises(anthropic.BadRequestError):
            client.messages.create(
                model="claude-3-5-sonnet-20241022",
                max_tokens=10,
                messages=[{"role": "system", "content": "x"}],
            )


@pytest.fixture
def gemini(fakes) -> Iterator[genai.Client]:
    with genai.Client(
        api_key=UPSTREAM_KEY, http_options={"base_url": fakes.gemini.url, "timeout": 10_000}
    ) as c:
        yield c


def test_google_genai_sdk_reads_the_fake(gemini: genai.Client) -> None:
    client = gemini
    response = client.models.generate_content(
        model="gemini-2.0-flash",
        contents=[genai_types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png"), "what is this"],
        config=genai_types.GenerateContentConfig(system_instruction="Be brief."),
    )
    assert response.text == "Echo: [image/png] what is this"
    assert response.usage_metadata is not None and response.usage_metadata.cached_content_token_count == 3
    weather = genai_types.Tool(
        function_declarations=[
            genai_types.FunctionDeclaration(
                name="get_weather", parameters_json_schema=WEATHER["input_schema"]
            )
        ]
    )
    calls = client.models.generate_content(
        model="gemini-2.0-flash", contents="Tokyo?", config=genai_types.GenerateContentConfig(tools=[weather])
    )
    assert [(c.name, c.args) for c in calls.function_calls or ()] == [("get_weather", {"city": "Tokyo"})]
    [part] = [p for p in calls.candidates[0].content.parts if p.function_call]  # type: ignore[index, union-attr]
    assert part.thought_signature == b'signed:{"city":"Tokyo"}'
    answer = client.models.generate_content(
        model="gemini-2.0-flash",
        config=genai_types.GenerateContentConfig(tools=[weather]),
        contents=[
            genai_types.Content(role="user", parts=[genai_types.Part(text="Tokyo?")]),
            calls.candidates[0].content,  # type: ignore[index]
            genai_types.Content(
                role="user",
                parts=[
                    genai_types.Part.from_function_response(name="get_weather", response={"result": "rain"})
                ],
            ),
        ],
    )
    assert answer.text == "Weather: rain"
    chunks = list(client.models.generate_content_stream(model="gemini-2.0-flash", contents="one two"))
    assert "".join(c.text or "" for c in chunks) == "Echo: one two"
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP  # type: ignore[index]
    blocked = client.models.generate_content(model="blocked", contents="x")
    assert blocked.prompt_feedback is not None and blocked.prompt_feedback.block_reason == "SAFETY"


def test_google_genai_sdk_reads_the_fake_errors(fakes, gemini: genai.Client) -> None:
    client = gemini
    with pytest.raises(genai_errors.ClientError) as limited:
        client.models.generate_content(model="error-429", contents="x")
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(genai_errors.ServerError) as unavailable:
        client.models.generate_content(model="error-503", contents="x")
    assert unavailable.value.status == "UNAVAILABLE"
    with (
        genai.Client(api_key="wrong", http_options={"base_url": fakes.gemini.url}) as bad_key,
        pytest.raises(genai_errors.ClientError),
    ):
        bad_key.models.generate_content(model="gemini-2.0-flash", contents="x")


@pytest.fixture
def bedrock(fakes) -> Iterator[Callable[..., Any]]:
    """Makes boto3 bedrock-runtime clients on the fake (signed with ``secret``), closed after the test."""
    clients: list[Any] = []

    def make(secret: str = bedrock_upstream.SECRET_KEY) -> Any:
        client = boto3.client(
            "bedrock-runtime",
            endpoint_url=fakes.bedrock.url,
            region_name=bedrock_upstream.REGION,
            aws_access_key_id=bedrock_upstream.ACCESS_KEY,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 1}),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_boto3_reads_the_fake_converse_and_its_event_stream(fakes, bedrock):
    client = bedrock()
    response = client.converse(
        modelId=BEDROCK_MODEL,
        system=[{"text": "Be brief."}],
        messages=[{"role": "user", "content": [{"text": "one two"}]}],
    )
    assert response["output"]["message"]["content"] == [{"text": "Echo: one two"}]
    assert response["usage"]["cacheReadInputTokens"] == 3
    tools = {
        "tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER["input_schema"]}}}]
    }
    streamed = client.converse_stream(
        modelId=BEDROCK_MODEL,
        toolConfig=tools,
        messages=[{"role": "user", "content": [{"text": "Paris and Tokyo"}]}],
    )
    events = list(streamed["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    inputs: dict[int, str] = {}
    for e in events:
        delta = e.get("contentBlockDelta", {}).get("delta", {}).get("toolUse")
        if delta:
            index = e["contentBlockDelta"]["contentBlockIndex"]
            inputs[index] = inputs.get(index, "") + delta["input"]
    assert list(inputs.values()) == ['{"city":"Paris"}', '{"city":"Tokyo"}']
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 3 + 2 * 9
    assert fakes.aws.signatures_checked == 2


def test_boto3_reads_the_fake_errors_and_the_fake_checks_signatures(bedrock):
    with pytest.raises(ClientError) as throttled:
        bedrock().converse(modelId="error-429", messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    with pytest.raises(ClientError) as forged:
        bedrock(secret="not-the-secret").converse(
            modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}]
        )
    assert forged.value.response["Error"]["Code"] == "InvalidSignatureException"
    stream = bedrock().converse_stream(
        modelId="stream-error", messages=[{"role": "user", "content": [{"text": "a b"}]}]
    )
    events = stream["stream"]
    with pytest.raises(ClientError) as mid_stream:
        try:
            list(events)
        finally:
            events.close()  # a stream that raised keeps its connection out of the pool: closing the client misses it
    assert mid_stream.value.response["Error"]["Code"] == "throttlingException"
