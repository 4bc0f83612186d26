"""``POST /v1/responses`` with the official openai SDK in front of the bundled engine (SmolLM2, in-process):
the Responses API in, translated to the chat shape the engine serves, the answer translated back, whole and
streamed."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import KEY
from tests.harness import ServerThread
from tests.openapi import validate

QUESTION = "What is the capital of France?"


@pytest.fixture
def client(local_gateway: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=local_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def test_the_local_engine_answers_responses_clients(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="smollm2",
        input=QUESTION,
        instructions="Answer in one sentence.",
        max_output_tokens=24,
        temperature=0,
    )
    assert response.status in ("completed", "incomplete") and response.model == "smollm2"
    assert "Paris" in response.output_text
    assert response.usage is not None and response.usage.input_tokens > 5
    assert 0 < response.usage.output_tokens <= 24
    validate("Response", response.model_dump(mode="json", exclude_unset=True))
    assert client.responses.retrieve(response.id).output_text == response.output_text


def test_a_streamed_local_response_equals_the_whole_one(client: openai.OpenAI) -> None:
    asked = {"model": "smollm2", "input": QUESTION, "max_output_tokens": 24, "temperature": 0}
    whole = client.responses.create(**asked)  # type: ignore[call-overload]
    with client.responses.stream(**asked) as stream:  # type: ignore[call-overload]
        events = [event for event in stream]
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    for event in events:
        validate("ResponseStreamEvent", event.model_dump(mode="json", exclude_unset=True, warnings=False))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text and "Paris" in final.output_text
    assert final.usage is not None and whole.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        whole.usage.input_tokens,
        whole.usage.output_tokens,
    )
