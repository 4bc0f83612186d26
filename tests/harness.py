"""Real servers on loopback for tests: each runs its own event loop in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """Serves an aiohttp app built inside the server's own loop, on a free loopback port."""

    def __init__(self, make_app: Callable[[], web.Application], *, shutdown_timeout: float = 2.0) -> None:
        self._make_app = make_app
        self._shutdown_timeout = shutdown_timeout
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        self.app = self._make_app()
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def call(self, coro_fn: Callable[[], object], timeout: float = 30) -> object:
        async def run() -> object:
            return coro_fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def _tasks(self) -> str:
        import io

        out = io.StringIO()
        for task in asyncio.all_tasks(self.loop):
            task.print_stack(limit=8, file=out)
        return out.getvalue()

    def stop(self) -> None:
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop)
            try:
                future.result(timeout=30)
            except TimeoutError:
                raise AssertionError("the server did not shut down in 30 s; its tasks:\n" + self._tasks()) from None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
