"""Disaggregated prefill/decode: a prefill worker and a decode worker behind the router, over both
KV transports, answer exactly as one aggregated engine does, and free their blocks on abort and
when the peer dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from local_engine.async_engine import AsyncEngine
from local_engine.disagg import add_prefill_routes, make_connector
from local_engine.disagg_router import DisaggRouter, build_router_app
from local_engine.kv_transfer import ShmConnector
from local_engine.server import build_app
from tests.harness import free_port

ENGINE_OPTS: dict[str, Any] = dict(block_size=4, num_kv_blocks=256)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _app(engine: AsyncEngine) -> web.Application:
    async def factory() -> AsyncEngine:
        return engine

    return build_app(factory, close_engine=False)


async def _until(cond: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not await cond():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def engines(tiny_llama: Path) -> Iterator[dict[str, AsyncEngine]]:
    es = {
        role: AsyncEngine.from_model(tiny_llama, **ENGINE_OPTS)
        for role in ("aggregated", "prefill", "decode")
    }
    yield es
    for e in es.values():
        e.shutdown()


class Deployment:
    def __init__(self, engines: dict[str, AsyncEngine], transport: str, **connector: Any) -> None:
        self.engines = engines
        self.connector = make_connector(transport) if not connector else ShmConnector(**connector)
        self.runners: list[web.AppRunner] = []
        self.prefill_url = self.decode_url = self.aggregated_url = self.router_url = ""

    async def start(self, *, both: bool = False, prefill_url: str | None = None) -> None:
        prefill_app = _app(self.engines["prefill"])
        add_prefill_routes(prefill_app, self.connector)
        for name, app in (
            ("prefill", prefill_app),
            ("decode", _app(self.engines["decode"])),
            ("aggregated", _app(self.engines["aggregated"])),
        ):
            runner, url = await _serve(app)
            self.runners.append(runner)
            setattr(self, f"{name}_url", url)
        self.router = DisaggRouter(
            [prefill_url or self.prefill_url], [self.decode_url], [self.aggregated_url] if both else []
        )
        runner, self.router_url = await _serve(build_router_app(self.router))
        self.runners.append(runner)

    async def close(self) -> None:
        for r in reversed(self.runners):
            await r.cleanup()

    async def prefill_status(self) -> dict[str, int]:
        async with httpx.AsyncClient() as c:
            status: dict[str, int] = (await c.get(f"{self.prefill_url}/v1/disagg/status")).json()
            return status

    async def freed(self) -> bool:
        status = await self.prefill_status()
        return (
            status["held"] == 0
            and all(e.metrics["kv_blocks_used"] == 0 for e in self.engines.values())
            and all(e.metrics["running_seqs"] == 0 for e in self.engines.values())
        )


@pytest.fixture(params=["shm", "tcp"])
async def deployment(
    request: pytest.FixtureRequest, engines: dict[str, AsyncEngine]
) -> AsyncIterator[Deployment]:
    d = Deployment(engines, request.param)
    await d.start()
    yield d
    await d.close()


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


PROMPTS = [
    "the quick brown fox",
    "a paged cache keeps keys and values in fixed size blocks " * 6,  # many blocks, not block-aligned
    "continuous batching schedules tokens at every step " * 4,
    "a paged cache keeps keys and values in fixed size blocks " * 6 + "again",  # shares the decode's cache
]


async def _compare(split: openai.AsyncOpenAI, whole: openai.AsyncOpenAI) -> None:
    for prompt in PROMPTS:
        kw: dict[str, Any] = dict(model="m", prompt=prompt, max_tokens=24, temperature=0)
        got, want = await split.completions.create(**kw), await whole.completions.create(**kw)
        assert got.choices[0].text == want.choices[0].text
        assert got.choices[0].finish_reason == want.choices[0].finish_reason
        assert got.usage is not None and want.usage is not None
        assert got.usage.prompt_tokens == want.usage.prompt_tokens
        assert got.usage.completion_tokens == want.usage.completion_tokens
    messages: Any = [{"role": "user", "content": "héllo wörld, what is a paged cache?"}]
    kw = dict(model="m", messages=messages, max_tokens=20, temperature=0)
    want_text = (await whole.chat.completions.create(**kw)).choices[0].message.content
    stream = await split.chat.completions.create(**kw, stream=True)
    got_text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert got_text == want_text


async def test_greedy_outputs_match_the_aggregated_engine(deployment: Deployment) -> None:
    async with _client(deployment.router_url) as split, _client(deployment.aggregated_url) as whole:
        await _compare(split, whole)
    assert deployment.router.counts["disaggregated"] == len(PROMPTS) + 1
    assert deployment.router.counts["aggregated"] == 0
    # Both sides let go of every block and every handoff copy.
    await _until(deployment.freed, "both workers freed their blocks")
    status = await deployment.prefill_status()
    assert status["taken_total"] == status["saved_total"] == len(PROMPTS) + 1


async def test_client_disconnect_frees_blocks_on_both_sides(deployment: Deployment) -> None:
    body = {
        "model": "m",
        "prompt": PROMPTS[1],
        "max_tokens": 200,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=60) as c:
        async with c.stream("POST", f"{deployment.router_url}/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break  # one token arrived; the client walks away
            assert deployment.engines["decode"].metrics["kv_blocks_used"]
    await _until(deployment.freed, "the abandoned request's blocks were freed")


async def test_falls_back_to_a_both_worker_when_the_prefill_worker_is_gone(
    engines: dict[str, AsyncEngine],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # a port nobody listens on
    d = Deployment(engines, "tcp")
    await d.start(both=True, prefill_url=dead)
    try:
        kw: dict[str, Any] = dict(model="m", prompt=PROMPTS[0], max_tokens=8, temperature=0)
        async with _client(d.router_url) as routed, _client(d.aggregated_url) as whole:
            got = await routed.completions.create(**kw)
            want = await whole.completions.create(**kw)
            assert got.choices[0].text == want.choices[0].text
            assert d.router.counts == {"disaggregated": 0, "aggregated": 1, "prefill_failed": 1}
            # The dead worker now sits out: the next request goes straight to the both worker.
            await routed.completions.create(**kw)
            assert d.router.counts == {"disaggregated": 0, "aggregated": 2, "prefill_failed": 1}
    finally:
        await d.close()
    router = DisaggRouter(both=[])  # nobody at all: a clear 503 in OpenAI's format
    runner, url = await _serve(build_router_app(router))
    try:
        async with _client(url) as client:
            with pytest.raises(openai.APIStatusError) as e:
                await client.completions.create(model="m", prompt="x", max_tokens=2)
        assert e.value.status_code == 503
        assert e.value.body["code"] == "no_free_worker"  # type: ignore[index]
    finally:
        await runner.cleanup()


async def test_a_dead_prefill_or_decode_worker_makes_way_for_the_next_of_its_role(
    engines: dict[str, AsyncEngine],
) -> None:
    d = Deployment(engines, "tcp")
    await d.start()
    dead_prefill, dead_decode = (f"http://127.0.0.1:{free_port()}" for _ in range(2))  # nobody listens
    router = DisaggRouter([dead_prefill, d.prefill_url], [dead_decode, d.decode_url])  # no both worker
    runner, url = await _serve(build_router_app(router))
    try:
        kw: dict[str, Any] = dict(model="m", prompt=PROMPTS[0], max_tokens=8, temperature=0)
        async with _client(url) as routed, _client(d.aggregated_url) as whole:
            want = (await whole.completions.create(**kw)).choices[0].text
            # equally idle workers take turns: within two requests each dead one is tried, and skipped
            for _ in range(2):
                assert (await routed.completions.create(**kw)).choices[0].text == want
        assert router.counts == {"disaggregated": 2, "aggregated": 0, "prefill_failed": 1}
        assert all(w.down_until > 0 for w in router.workers if w.url in (dead_prefill, dead_decode))
        await _until(d.freed, "both workers freed their blocks")
    finally:
        await runner.cleanup()
        await d.close()


async def _prefill_only(d: Deployment, prompt: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.post(
            f"{d.prefill_url}/v1/disagg/prefill",
            json={"chat": False, "request": {"model": "m", "prompt": prompt, "temperature": 0}},
        )
    assert r.status_code == 200, r.text
    return r.json()["kv_transfer_params"]


async def test_decode_worker_dying_mid_transfer_frees_the_prefill_copy(
    engines: dict[str, AsyncEngine],
) -> None:
    d = Deployment(engines, "tcp")
    await d.start()
    try:
        params = await _prefill_only(d, PROMPTS[1])
        assert (await d.prefill_status())["held"] == 1
        # A decode worker that asks, reads the header, and dies (its kernel closes the socket).
        reader, writer = await asyncio.open_connection(params["host"], params["port"])
        pull = json.dumps({"pull": params["handoff_id"]}).encode()
        writer.write(struct.pack("!2sBQ", b"KV", 1, len(pull)) + pull)
        await writer.drain()
        await reader.readexactly(11)
        writer.transport.abort()
        await writer.wait_closed()
        await _until(lambda: _held_is(d, 0), "the prefill side dropped the handoff")
        status = await d.prefill_status()
        assert status["taken_total"] == 0 and status["expired_total"] == 0
    finally:
        await d.close()


async def _held_is(d: Deployment, n: int) -> bool:
    return (await d.prefill_status())["held"] == n


async def test_untaken_shm_handoff_expires(engines: dict[str, AsyncEngine], tmp_path: Path) -> None:
    now = [0.0]
    d = Deployment(engines, "shm", directory=tmp_path, ttl_s=10.0, clock=lambda: now[0])
    await d.start()
    try:
        params = await _prefill_only(d, PROMPTS[2])
        path = Path(params["path"])
        assert await asyncio.to_thread(path.exists) and (await d.prefill_status())["held"] == 1
        now[0] = 9.0
        assert (await d.prefill_status())["held"] == 1
        now[0] = 10.0  # the decode worker never came (it died before loading)
        status = await d.prefill_status()
        assert status["held"] == 0 and status["expired_total"] == 1
        assert not await asyncio.to_thread(path.exists)
    finally:
        await d.close()


@pytest.fixture
def prefill_process(tiny_llama: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real prefill worker process (``python -m local_engine serve --role prefill``), TCP transport."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_engine",
            "serve",
            "--role",
            "prefill",
            "--kv-transport",
            "tcp",
            "--model",
            str(tiny_llama),
            "--port",
            str(port),
            "--block-size",
            "4",
            "--kv-cache-gib",
            "0.001",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield proc, port
    proc.kill()
    proc.wait()


async def test_prefill_worker_dying_mid_transfer_frees_the_decode_blocks(
    engines: dict[str, AsyncEngine], prefill_process: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = prefill_process
    decode = engines["decode"]
    runner, decode_url = await _serve(_app(decode))
    try:
        async with httpx.AsyncClient(timeout=60) as c:

            async def up() -> bool:
                try:
                    return (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await _until(up, "the prefill worker is up", 120)
            r = await c.post(
                f"http://127.0.0.1:{port}/v1/disagg/prefill",
                json={"chat": False, "request": {"model": "m", "prompt": PROMPTS[1], "temperature": 0}},
            )
            params = r.json()["kv_transfer_params"]
            os.kill(proc.pid, signal.SIGSTOP)  # it accepts the pull (the kernel does) but never answers
            body = {
                "model": "m",
                "prompt": PROMPTS[1],
                "max_tokens": 8,
                "temperature": 0,
                "kv_transfer_params": params,
            }
            task = asyncio.create_task(c.post(f"{decode_url}/v1/completions", json=body))

            async def reserved() -> bool:
                return bool(decode.metrics["kv_blocks_used"])

            await _until(reserved, "the decode worker took blocks for the prompt")
            proc.kill()
            resp = await task
            assert resp.status_code == 502
            assert resp.json()["error"]["code"] == "kv_transfer_failed"

            async def freed() -> bool:
                return decode.metrics["kv_blocks_used"] == 0

            await _until(freed, "the decode worker freed what it had allocated")
    finally:
        await runner.cleanup()
