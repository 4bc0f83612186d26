"""Real servers on loopback for tests: each runs its own event loop in a thread, watched by a guard that
fails the test when something blocks that loop."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from aiohttp import web

# port -> the test that took it: a socket left to the GC (a ResourceWarning, an error) is often collected in a
# later test; its peer's port names the test whose server it talked to (see tests/conftest.py)
PORT_OWNERS: dict[int, str] = {}


# Ports the tests' servers listen on come from below the kernel's ephemeral range (32768-60999 by default), one
# slice per pytest-xdist worker: a port the kernel handed out (bind to 0) and that the test binds again moments
# later can meanwhile become another process's outgoing connection's port (seen once as "address already in use"
# with 3 workers); ports out of that range are never handed to connections, and no two workers share a slice.
_PORTS = range(10_000, 32_768)
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_WORKERS = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), _WORKER + 1)
_SLICE = len(_PORTS) // _WORKERS
_next_port = _PORTS.start + _WORKER * _SLICE + random.randrange(_SLICE)
_port_lock = threading.Lock()


def free_port() -> int:
    """A loopback port no one listens on, from this worker's slice (tried in turn from a random start)."""
    global _next_port
    first = _PORTS.start + _WORKER * _SLICE
    for _ in range(_SLICE):
        with _port_lock:
            port, _next_port = _next_port, first + (_next_port + 1 - first) % _SLICE
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use, or lingering after a close: the next one
                continue
        PORT_OWNERS[port] = os.environ.get("PYTEST_CURRENT_TEST", "outside a test").rsplit(" (", 1)[0]
        return port
    raise RuntimeError(f"no free port in {first}-{first + _SLICE - 1}")


def reap(process: subprocess.Popen[Any], timeout_s: float = 30) -> int | None:
    """Wait for a process told to stop; killed and reaped if it has not exited in ``timeout_s``. Its exit code,
    or None when it had to be killed. Never leaves it running: a ``Popen`` collected while its process runs
    warns "subprocess is still running", failing whichever later test the collector runs in."""
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def serve_argv(config: object, port: object, workers: object | None = None) -> list[str]:
    """``python -m gateway serve`` with ``config`` on a loopback ``port`` (``workers``: else the config's)."""
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port)]
    return argv if workers is None else [*argv, "--workers", str(workers)]


BLOCKED_S = 0.5  # a loop held this long by one call fails the test
_BEAT_S = 0.05


_gc_cpu: dict[int, float] = {}  # per thread: the CPU its garbage collections took
_gc_started: dict[int, float] = {}


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    """A full collection of the test process's heap (thousands of tests' objects) can take seconds, and it
    runs on whichever thread allocates: that is the test process's size, not work the loop was given."""
    ident = threading.get_ident()
    if phase == "start":
        _gc_started[ident] = time.thread_time()
    elif ident in _gc_started:
        _gc_cpu[ident] = _gc_cpu.get(ident, 0.0) + time.thread_time() - _gc_started.pop(ident)


gc.callbacks.append(_gc_timer)


class LoopGuard:
    """Watches an event loop from another thread and records every call that held it for ``BLOCKED_S``.

    A heartbeat on the loop stops beating while the loop is held. On a loaded machine it also stops while
    the thread merely waits for a CPU, so a stall counts as a block only for what the thread did meanwhile:
    it burned ``BLOCKED_S`` of CPU (work that belongs off the loop), or the kernel had it asleep at one line
    outside the loop's selector for half of ``BLOCKED_S`` (a blocking sleep, lock or socket call). A thread
    that waits for a CPU is runnable, never asleep, and burns nothing."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.loop = loop
        self.thread = thread
        self.blocks: list[str] = []
        self._beat = time.monotonic()
        self._beat_cpu = 0.0  # the loop thread's CPU time at its last beat
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="loop-guard")

    def start(self) -> None:
        self.loop.call_soon_threadsafe(self._heartbeat)
        self._watcher.start()

    def _heartbeat(self) -> None:
        self._beat, self._beat_cpu = (
            time.monotonic(),
            time.thread_time() - _gc_cpu.get(threading.get_ident(), 0.0),
        )
        if not self._stop.is_set():
            self.loop.call_later(_BEAT_S, self._heartbeat)

    def _cpu(self) -> float:
        assert self.thread.ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread.ident))

    def _asleep(self) -> bool:
        try:
            with open(f"/proc/self/task/{self.thread.native_id}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] in ("S", "D")
        except OSError:
            return False

    def _where(self) -> traceback.StackSummary | None:
        frame = sys._current_frames().get(self.thread.ident or -1)
        return None if frame is None else traceback.extract_stack(frame, limit=12)

    def _watch(self) -> None:
        while not self._stop.wait(_BEAT_S):
            if time.monotonic() - self._beat < BLOCKED_S or not self.thread.is_alive():
                continue
            beat, cpu = self._beat, self._beat_cpu
            where = self._where()
            # A blocking call shows as a run of looks that find the thread asleep at one line outside the
            # selector. The run need not fill the whole stall: on a loaded machine the stall can start with
            # the thread waiting for a core and end with it waiting for one again after the call returned
            # (runnable, not asleep) before the loop beats. Half of BLOCKED_S asleep at one line is a block.
            run_at: traceback.StackSummary | None = None
            run_since = 0.0
            found: traceback.StackSummary | None = None
            while self._beat == beat and not self._stop.is_set():  # until the loop runs again
                now = self._where()
                idle = now is not None and any("selectors.py" in f.filename for f in now[-2:])
                # asyncio's default executor starting a worker thread waits for it to run: on a loaded machine
                # that wait is the scheduler's, not a blocking call of ours (getaddrinfo, to_thread calls use it)
                spawning = now is not None and any(f.name == "_adjust_thread_count" for f in now)
                if now is None or idle or spawning or not self._asleep():
                    run_at = None
                elif run_at is None or now[-1] != run_at[-1]:
                    run_at, run_since = now, time.monotonic()
                elif found is None and time.monotonic() - run_since >= BLOCKED_S / 2:
                    found = run_at
                self._stop.wait(_BEAT_S)
            held = time.monotonic() - beat
            burned = self._cpu() - _gc_cpu.get(self.thread.ident or -1, 0.0) - cpu
            if found is None and burned >= BLOCKED_S:
                found = where
            if found is not None:
                self.blocks.append(
                    f"the event loop was held {held:.2f} s ({burned:.2f} s of CPU) at:\n"
                    + "".join(found.format())
                )

    def stop(self) -> None:
        self._stop.set()
        self._watcher.join(timeout=5)


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
        self.guard = LoopGuard(self.loop, self._thread)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        self.guard.start()  # from when it serves: building the app (tokenizers, models) happens before
        return self

    async def _start(self) -> None:
        self.app = self._make_app()
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=self._shutdown_timeout
        )
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
                raise AssertionError(
                    "the server did not shut down in 30 s; its tasks:\n" + self._tasks()
                ) from None
        self.guard.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
        if self.guard.blocks:
            raise AssertionError("a server blocked its event loop:\n" + "\n".join(self.guard.blocks))


def reference_model(path: object) -> Any:
    """transformers' model at ``path`` (float32, eval mode), the reference the engine tests compare with.

    Loaded under the process's model-load lock: from_pretrained swaps module-level functions for its duration,
    and a gateway's embedder may be loading on another thread (see policies/cache/embedder.LOAD_LOCK)."""
    import torch
    from transformers import AutoModelForCausalLM

    from policies.cache.embedder import LOAD_LOCK

    with LOAD_LOCK:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
