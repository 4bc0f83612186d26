"""The server through the official openai SDK: the tiny model, then SmolLM2 answering a real question."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from local_engine.async_engine import AsyncEngine
from tests.local_engine.test_server import serve

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("loop_guard")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _engine(path: Path, **options: Any) -> Iterator[AsyncEngine]:
    engine = AsyncEngine.from_model(path, **options)
    yield engine
    engine.shutdown()


async def _client(engine: AsyncEngine, sdk: Any) -> AsyncIterator[object]:
    runner, url = await serve(engine)
    sdk.base_url = f"{url}/v1"
    try:
        yield sdk
    finally:
        await sdk.close()  # its pooled sockets are not left to the GC (a ResourceWarning)
        await runner.cleanup()


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_path: Path) -> Iterator[AsyncEngine]:
    yield from _engine(smollm2_path)


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama: Path) -> Iterator[AsyncEngine]:
    yield from _engine(tiny_llama, block_size=4, num_kv_blocks=256)


@pytest.fixture(scope="module")
def long_engine(tiny_llama_long: Path) -> Iterator[AsyncEngine]:
    yield from _engine(tiny_llama_long, block_size=4, num_kv_blocks=1024)


@pytest.fixture
async def tiny_client(tiny_engine: AsyncEngine, sdk: Any) -> AsyncIterator[object]:
    async for client in _client(tiny_engine, sdk):
        yield client


@pytest.fixture
async def smollm2_client(smollm2_engine: AsyncEngine, sdk: Any) -> AsyncIterator[object]:
    async for client in _client(smollm2_engine, sdk):
        yield client


@pytest.fixture
async def long_client(long_engine: AsyncEngine, sdk: Any) -> AsyncIterator[object]:
    async for client in _client(long_engine, sdk):
        yield client


@pytest.fixture
def sdk() -> Any:
    # built off the loop (loading the TLS trust store takes longer than the loop guard allows)
    return openai.AsyncOpenAI(base_url="http://127.0.0.1:1/v1", api_key="unused", max_retries=0, timeout=120)


async def test_sdk_models_seeded_chat_and_errors(tiny_client: Any) -> None:
    models = await tiny_client.models.list()
    assert [m.id for m in models.data] == ["llama"]
    kw = dict(
        model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=8, seed=3, temperature=1.2
    )
    a = await tiny_client.chat.completions.create(**kw)
    b = await tiny_client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        await tiny_client.chat.completions.create(model="llama", messages=[], max_tokens=1)
    assert e.value.param == "messages"


async def test_smollm2_knows_the_capital_of_france(smollm2_client: Any) -> None:
    resp = await smollm2_client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=16, temperature=0
    )
    assert "Paris" in (resp.choices[0].message.content or "")
    assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 16


async def test_smollm2_streams_the_answer(smollm2_client: Any) -> None:
    stream = await smollm2_client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert "Paris" in text
    assert usage is not None and usage.completion_tokens > 0


WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 4}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "weather in oslo?"}]


async def test_sdk_tool_round_trip_streamed_and_not(long_client: Any) -> None:
    kw = dict(
        model="m",
        messages=ASK,
        tools=[WEATHER],
        max_tokens=200,
        seed=7,
        temperature=1.0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    first = await long_client.chat.completions.create(**kw)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.content is None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    plain = await long_client.chat.completions.create(model="m", messages=ASK, max_tokens=1)
    assert first.usage.prompt_tokens > plain.usage.prompt_tokens + 50  # the tools are described in the prompt

    # The same seeded request streamed: tool_calls deltas that add up to the same call.
    stream = await long_client.chat.completions.create(**kw, stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        assert not delta.content
        for tc in delta.tool_calls or ():
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {0: {"name": "get_weather", "arguments": call.function.arguments}}

    # The tool's result goes back; with tool_choice none the model answers in text.
    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'},
    ]
    answer = await long_client.chat.completions.create(
        model="m", messages=history, tools=[WEATHER], tool_choice="none", max_tokens=6, temperature=0
    )
    assert answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens > 0
    assert (
        answer.usage.prompt_tokens > plain.usage.prompt_tokens + 30
    )  # the history holds the call and its result


async def test_sdk_json_schema_response_format(long_client: Any) -> None:
    schema = WEATHER["function"]["parameters"]
    for seed in range(3):
        resp = await long_client.chat.completions.create(
            model="m",
            messages=ASK,
            max_tokens=80,
            seed=seed,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": schema, "strict": True},
            },
        )
        assert resp.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(resp.choices[0].message.content), schema)
    with pytest.raises(openai.BadRequestError) as bad:
        await long_client.chat.completions.create(
            model="m",
            messages=ASK,
            max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "wat"}}},
        )
    assert bad.value.param == "response_format"
