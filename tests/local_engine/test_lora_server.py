"""LoRA adapters through ``python -m local_engine serve``'s app: vLLM's load/unload routes, the openai SDK
naming adapters by ``model``, answers equal to peft's merged models, several adapters at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from local_engine.async_engine import AsyncEngine
from tests.local_engine.conftest import hf_model
from tests.local_engine.test_lora import PROMPT, _reference
from tests.local_engine.test_server import serve

pytestmark = pytest.mark.usefixtures("loop_guard")
TOKENS = 6


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine.from_model(tiny_llama, block_size=4, num_kv_blocks=256)
    yield engine
    engine.shutdown()


@pytest.fixture
async def url(engine: AsyncEngine) -> AsyncIterator[str]:
    runner, url = await serve(engine)
    yield url
    await runner.cleanup()
    for info in engine.list_loras():
        engine.remove_lora(info.name)


@pytest.fixture
async def sdk(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as client:
        yield client


async def _complete(sdk: openai.AsyncOpenAI, model: str) -> str:
    """The greedy completion of PROMPT (token ids) by ``model``."""
    answer = await sdk.completions.create(
        model=model, prompt=PROMPT, max_tokens=TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    assert answer.choices[0].finish_reason == "length" and answer.usage is not None
    assert answer.usage.completion_tokens == TOKENS
    return answer.choices[0].text


def _text(engine: AsyncEngine, ids: list[int]) -> str:
    """What the server writes for ``ids`` after PROMPT (a character split across tokens held back, as it is)."""
    from local_engine.detokenizer import IncrementalDetokenizer

    detok = IncrementalDetokenizer(engine.engine.tokenizer, PROMPT)
    return "".join(detok.add(t) for t in ids)


async def _want(engine: AsyncEngine, model: Any) -> str:
    ids, _ = await asyncio.to_thread(_reference, model, PROMPT, TOKENS)  # torch off the event loop
    return _text(engine, ids)


async def test_load_serve_and_unload_over_http(
    engine: AsyncEngine, url: str, sdk: openai.AsyncOpenAI, adapters: dict[str, tuple[Path, Any]]
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        loaded = await http.post(
            "/v1/load_lora_adapter", json={"lora_name": "attn", "lora_path": str(adapters["attn"][0])}
        )
        assert loaded.status_code == 200
        assert loaded.json() == {
            "object": "lora_adapter",
            "name": "attn",
            "path": str(adapters["attn"][0]),
            "rank": 4,
            "alpha": 8.0,
            "target_modules": ["q_proj", "v_proj"],
        }
        models = await sdk.models.list()
        assert [(m.id, getattr(m, "parent", None)) for m in models.data] == [
            ("llama", None),
            ("attn", "llama"),
        ]

        want = await _want(engine, adapters["attn"][1])
        assert await _complete(sdk, "llama:attn") == want
        assert await _complete(sdk, "attn") == want
        assert await _complete(sdk, "llama") != want  # the base model is not the adapter

        with pytest.raises(openai.NotFoundError) as missing:
            await _complete(sdk, "llama:nope")
        assert missing.value.code == "model_not_found" and "'nope'" in missing.value.message

        unloaded = await http.post("/v1/unload_lora_adapter", json={"lora_name": "attn"})
        assert unloaded.status_code == 200 and unloaded.json()["deleted"] is True
        with pytest.raises(openai.NotFoundError):
            await _complete(sdk, "llama:attn")
        again = await http.post("/v1/unload_lora_adapter", json={"lora_name": "attn"})
        assert again.status_code == 404 and again.json()["error"]["code"] == "lora_not_found"


async def test_bad_load_requests_are_400s(
    url: str, tmp_path: Path, adapters: dict[str, tuple[Path, Any]]
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        nothing = await http.post(
            "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)}
        )
        assert nothing.status_code == 400
        assert "no adapter_config.json" in nothing.json()["error"]["message"]
        unnamed = await http.post("/v1/load_lora_adapter", json={"lora_path": str(adapters["attn"][0])})
        assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "lora_name"
        garbage = await http.post("/v1/load_lora_adapter", content=b"{not json")
        assert garbage.status_code == 400


async def test_three_adapters_and_the_base_at_once(
    engine: AsyncEngine, url: str, sdk: openai.AsyncOpenAI, adapters: dict[str, tuple[Path, Any]]
) -> None:
    for name, (path, _) in adapters.items():
        await engine.add_lora(name, path)
    models = ["llama", *(f"llama:{name}" for name in adapters)]
    answers = await asyncio.gather(*(_complete(sdk, m) for m in models))
    base = await asyncio.to_thread(hf_model, engine.engine.model_path)
    want = [await _want(engine, model) for model in [base, *(merged for _, merged in adapters.values())]]
    assert answers == want
