"""AsyncEngine: concurrent streams, abort on caller exit, errors, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from local_engine import LLM, SamplingParams
from local_engine.async_engine import AsyncEngine, EngineClosedError
from local_engine.engine import RequestError

pytestmark = pytest.mark.usefixtures("loop_guard")
LONG = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)


@pytest.fixture
async def engine(tiny_llama: Path) -> AsyncIterator[AsyncEngine]:
    eng = await AsyncEngine.create(tiny_llama, block_size=4, num_kv_blocks=256)
    yield eng
    await eng.close()


async def _wait_until_idle(engine: AsyncEngine) -> None:
    for _ in range(200):
        m = engine.metrics
        if m["running_seqs"] == 0 and m["waiting_seqs"] == 0 and m["kv_blocks_used"] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine still busy: {engine.metrics}")


async def test_concurrent_streams_match_offline_generation(engine: AsyncEngine, tiny_llama: Path) -> None:
    prompts = ["the quick brown fox", "continuous batching", "a paged cache", "héllo wörld"]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    async def run(i: int) -> tuple[str, list[int], str | None]:
        text, ids, reason = "", list[int](), None
        async for d in engine.generate(f"r{i}", prompts[i], params):
            text += d.text
            ids.extend(d.token_ids)
            reason = d.finish_reason
        return text, ids, reason

    results = await asyncio.gather(*(run(i) for i in range(len(prompts))))
    offline = LLM(tiny_llama, block_size=4, num_kv_blocks=256).generate(prompts, params)
    for (text, ids, reason), ref in zip(results, offline, strict=True):
        assert ids == ref.token_ids and text == ref.text and reason == "length"
    m = engine.metrics
    assert m["generation_tokens_total"] == 48 and m["ttft_s_mean"] is not None and m["itl_s_mean"] is not None


async def test_leaving_the_stream_aborts_and_frees_blocks(engine: AsyncEngine) -> None:
    gen = engine.generate("a", "the quick brown fox", LONG)
    got = 0
    async for _ in gen:
        got += 1
        if got == 3:
            break
    await gen.aclose()
    await _wait_until_idle(engine)
    assert engine.metrics["requests_finished_total"] == 0


async def test_cancelled_caller_aborts_and_frees_blocks(engine: AsyncEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate("c", "the quick brown fox", LONG):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    assert (engine.metrics["kv_blocks_used"] or 0) > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_until_idle(engine)


async def test_bad_requests_raise_and_engine_keeps_serving(engine: AsyncEngine) -> None:
    with pytest.raises(RequestError, match="context"):
        async for _ in engine.generate("big", list(range(5, 300)), LONG):
            pass
    with pytest.raises(RequestError, match="vocabulary"):
        async for _ in engine.generate("oov", [1, 99999], LONG):
            pass
    outs = [
        d
        async for d in engine.generate(
            "ok", "the", SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
        )
    ]
    assert outs[-1].finish_reason == "length"


async def test_chat_messages_use_the_chat_template(engine: AsyncEngine) -> None:
    msgs = [{"role": "user", "content": "hello"}]
    assert engine.apply_chat_template(msgs) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    outs = [
        d
        async for d in engine.generate(
            "chat", msgs, SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
        )
    ]
    expected = len(engine.engine.tokenizer.encode_chat(msgs))
    assert outs[-1].prompt_tokens == expected


async def test_close_fails_running_requests(tiny_llama: Path) -> None:
    eng = await AsyncEngine.create(tiny_llama, block_size=4, num_kv_blocks=256)
    gen = eng.generate("x", "the quick", LONG)
    await anext(gen)
    await eng.close()
    with pytest.raises(EngineClosedError):
        async for _ in gen:
            pass
    with pytest.raises(EngineClosedError):
        await anext(eng.generate("y", "the", LONG))
