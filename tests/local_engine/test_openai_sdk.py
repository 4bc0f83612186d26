"""The server through the official openai SDK: the tiny model, then SmolLM2 answering a real question."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from local_engine.async_engine import AsyncEngine
from tests.local_engine.test_server import serve

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("loop_guard")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_path: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine.from_model(smollm2_path)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine.from_model(tiny_llama, block_size=4, num_kv_blocks=256)
    yield engine
    engine.shutdown()


@pytest.fixture
async def tiny_client(tiny_engine: AsyncEngine, sdk: object) -> AsyncIterator[object]:
    runner, url = await serve(tiny_engine)
    sdk.base_url = f"{url}/v1"  # type: ignore[attr-defined]
    yield sdk
    await runner.cleanup()


@pytest.fixture
async def smollm2_client(smollm2_engine: AsyncEngine, sdk: object) -> AsyncIterator[object]:
    runner, url = await serve(smollm2_engine)
    sdk.base_url = f"{url}/v1"  # type: ignore[attr-defined]
    yield sdk
    await runner.cleanup()


@pytest.fixture
def sdk() -> object:
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
