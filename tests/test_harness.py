"""The guard every test server runs under: a call that holds the event loop fails the test; awaiting does not."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiohttp import web

from tests.harness import BLOCKED_S, ServerThread


def _server(handler) -> ServerThread:
    def make() -> web.Application:
        app = web.Application()
        app.router.add_get("/", handler)
        return app

    return ServerThread(make).start()


async def _sleeps_blocking(request: web.Request) -> web.Response:
    time.sleep(BLOCKED_S * 2)  # noqa: ASYNC251  (on purpose: what a sync client call or a lock does to the loop)
    return web.Response(text="late")


async def _computes_on_the_loop(request: web.Request) -> web.Response:
    end = time.thread_time() + BLOCKED_S * 1.5  # CPU work that belongs in a thread
    while time.thread_time() < end:
        pass
    return web.Response(text="late")


async def _awaits(request: web.Request) -> web.Response:
    await asyncio.sleep(BLOCKED_S * 2)
    return web.Response(text="on time")


@pytest.mark.parametrize(
    "handler, where", [(_sleeps_blocking, "time.sleep"), (_computes_on_the_loop, "thread_time")]
)
def test_a_call_that_holds_the_loop_fails_the_test(handler, where):
    server = _server(handler)
    assert httpx.get(server.url, timeout=30).text == "late"
    with pytest.raises(AssertionError, match="blocked its event loop") as failed:
        server.stop()
    assert where in str(failed.value)


def test_awaiting_is_not_blocking():
    server = _server(_awaits)
    assert httpx.get(server.url, timeout=30).text == "on time"
    server.stop()
