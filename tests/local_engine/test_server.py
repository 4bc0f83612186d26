"""The OpenAI-compatible server, driven over loopback by raw HTTP and by the openai SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from local_engine.async_engine import AsyncEngine
from local_engine.server import build_app

pytestmark = pytest.mark.usefixtures("loop_guard")


async def serve(engine: AsyncEngine) -> tuple[web.AppRunner, str]:
    async def factory() -> AsyncEngine:
        return engine

    runner = web.AppRunner(build_app(factory, close_engine=False))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine.from_model(tiny_llama, block_size=4, num_kv_blocks=256)
    yield engine
    engine.shutdown()


@pytest.fixture
async def tiny_url(tiny_engine: AsyncEngine) -> AsyncIterator[str]:
    runner, url = await serve(tiny_engine)
    yield url
    await runner.cleanup()


async def _sse(resp: aiohttp.ClientResponse) -> list[dict | str]:
    events: list[dict | str] = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_completions_non_streaming_with_usage_and_logprobs(tiny_url: str) -> None:
    body = {
        "model": "m",
        "prompt": "the quick",
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": 2,
        "ignore_eos": True,
    }
    async with aiohttp.ClientSession() as s, s.post(f"{tiny_url}/v1/completions", json=body) as r:
        assert r.status == 200
        data = await r.json()
    assert data["object"] == "text_completion"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == 5 and len(choice["logprobs"]["top_logprobs"][0]) <= 2
    assert data["usage"]["completion_tokens"] == 5
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + 5


async def test_chat_streaming_sse_with_include_usage(tiny_url: str) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as s, s.post(f"{tiny_url}/v1/chat/completions", json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = await _sse(r)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "temperature",
        ),
        ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, None),
        ("/v1/completions", {"prompt": list(range(5, 400))}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x", "speculative": "yes"}, 400, "speculative"),
    ],
)
async def test_errors_use_openai_format(
    tiny_url: str, path: str, body: dict, status: int, param: str | None
) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{tiny_url}{path}", json=body) as r:
        assert r.status == status
        err = (await r.json())["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


async def test_not_json_and_unknown_route(tiny_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{tiny_url}/v1/completions", data=b"{nope") as r:
            assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
        async with s.get(f"{tiny_url}/v1/nothing") as r:
            assert r.status == 404 and (await r.json())["error"]["type"] == "not_found_error"


async def test_client_disconnect_mid_stream_aborts(tiny_url: str, tiny_engine: AsyncEngine) -> None:
    import asyncio

    body = {"prompt": "the quick", "max_tokens": 200, "temperature": 0, "stream": True, "ignore_eos": True}
    async with aiohttp.ClientSession() as s, s.post(f"{tiny_url}/v1/completions", json=body) as r:
        await r.content.readline()
        assert tiny_engine.metrics["running_seqs"] == 1
    for _ in range(300):
        if tiny_engine.metrics["running_seqs"] == 0 and tiny_engine.metrics["kv_blocks_used"] == 0:
            break
        await asyncio.sleep(0.01)
    assert tiny_engine.metrics["running_seqs"] == 0 and tiny_engine.metrics["kv_blocks_used"] == 0


async def test_n_choices_streaming_and_not(tiny_url: str) -> None:
    body = {"prompt": "the quick brown fox", "max_tokens": 4, "n": 3, "seed": 1, "ignore_eos": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{tiny_url}/v1/completions", json=body) as r:
            data = await r.json()
        assert [c["index"] for c in data["choices"]] == [0, 1, 2]
        assert all(c["finish_reason"] == "length" for c in data["choices"])
        assert data["usage"]["completion_tokens"] == 12
        stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        async with s.post(f"{tiny_url}/v1/completions", json=stream_body) as r:
            events = await _sse(r)
    chunks = [e for e in events if isinstance(e, dict)]
    assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1, 2}
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    streamed = {i: "" for i in range(3)}
    for c in chunks:
        for ch in c["choices"]:
            streamed[ch["index"]] += ch["text"]
    assert [streamed[i] for i in range(3)] == [c["text"] for c in data["choices"]]  # same seed, same texts
