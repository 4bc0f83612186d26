"""Configuration reload without a restart: on SIGHUP, or when the file changes with ``server.watch_config``.

A reload builds and starts a whole new ``Gateway`` from the file, then the live one adopts its fields in one
step (no await in between), so a request sees either the old config or the new one, never a mix. Requests
already running keep the objects they started with; the replaced gateway is closed in the background once
they are done, or after ``server.drain_timeout_s``. An invalid file changes nothing: the problems are logged
and the old config keeps serving.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import metrics
from .config import ConfigError, LoadedConfig, ServerConfig, load_config
from .keys import GATEWAY
from .logs import get_logger
from .security import audit
from .state import Gateway

# Bound by the listening socket and the aiohttp runner at start-up.
RESTART_FIELDS = ("host", "port", "workers", "max_body_bytes", "drain_timeout_s")
WATCH_INTERVAL_S = 1.0
# A change is read once the file has stayed the same this long, so a half-written file is not taken.
SETTLE_S = 0.2


class _Generation:
    """Requests in flight since one gateway became live."""

    __slots__ = ("count", "idle")

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()


class Reloader:
    """Reloads ``app[GATEWAY]`` from ``path`` on request; install ``middleware`` before the app starts."""

    def __init__(
        self,
        app: web.Application,
        path: str | None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``sleep``: what the file watcher waits between looks (tests count and release them)."""
        self._app = app
        self._sleep = sleep
        self._path = path
        self._generation = _Generation()
        self._wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._seen = _stamp(self._file)

    @property
    def _file(self) -> str:
        return self._app[GATEWAY].loaded.path or ""

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        generation = self._generation
        generation.count += 1
        generation.idle.clear()
        try:
            return await handler(request)
        finally:
            generation.count -= 1
            if not generation.count:
                generation.idle.set()

    def start(self) -> None:
        for coroutine in (self._serve_requests(), self._watch()):
            task = asyncio.create_task(coroutine)
            self._tasks.add(task)

    def request(self) -> None:
        """Ask for a reload (safe from a signal handler); several requests before it runs make one reload."""
        self._wanted.set()

    async def close(self) -> None:
        """Stop watching and close any replaced gateway still waiting for its requests."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def reload(self) -> bool:
        """Load the file and switch to it; False (and the old config kept) when it cannot be used."""
        log = get_logger()
        live: Gateway = self._app[GATEWAY]
        if live.draining:
            return False
        self._seen = await asyncio.to_thread(_stamp, self._file)
        try:
            loaded = await asyncio.to_thread(load_config, self._path)
        except ConfigError as exc:
            log.error(
                "config reload failed; keeping the old config",
                config=self._file,
                problems=exc.problems,
                pid=os.getpid(),
            )
            if (trail := self._app.get(audit.AUDIT)) is not None:
                await trail.record(
                    "config.reload_refused", actor="system", outcome="failed", problems=exc.problems
                )
            return False
        fresh = Gateway.build(
            loaded, live.stores, live.pipeline.admission.clock
        )  # same store layer, same time
        try:
            await fresh.start()
            failed = await _started(fresh, live)
        except Exception:
            log.exception(
                "config reload failed to start; keeping the old config", config=self._file, pid=os.getpid()
            )
            await _discard(fresh, live)
            return False
        except asyncio.CancelledError:  # shutting down
            await _discard(fresh, live)
            raise
        if failed:
            log.error(
                "config reload failed; keeping the old config",
                config=self._file,
                pid=os.getpid(),
                problems=[f"deployment {id_}: {reason}" for id_, reason in failed.items()],
            )
            await _discard(fresh, live)
            return False
        if live.draining:  # SIGTERM came while the new one started: nothing left to switch to
            await _discard(fresh, live)
            return False
        _warn_restart_fields(live.loaded.config.server, loaded.config.server)
        for alias, deployment in _deployments(live.loaded).keys() - _deployments(loaded).keys():
            metrics.DEPLOYMENT_ENABLED.labels(alias, deployment).set(0)  # removed by this reload
        retired, self._generation = self._generation, _Generation()
        old = live.adopt(fresh)
        config = loaded.config
        metrics.publish_budgets(config)
        log.info(
            "config reloaded",
            config=loaded.path,
            pid=os.getpid(),
            models=len(config.models),
            tenants=len(config.tenants),
            deployments_disabled=len(loaded.disabled),
        )
        if (trail := self._app.get(audit.AUDIT)) is not None:
            await audit.config_changed(trail, old.loaded.config, config, loaded.path)
        task = asyncio.create_task(self._retire(old, retired, config.server.drain_timeout_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return True

    async def _serve_requests(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.reload()
            except Exception:  # a bug must not end reloading for the life of the process
                get_logger().exception("config reload failed; keeping the old config", pid=os.getpid())

    async def _watch(self) -> None:
        while True:
            await self._sleep(WATCH_INTERVAL_S)
            loaded: LoadedConfig = self._app[GATEWAY].loaded
            if not loaded.config.server.watch_config:
                continue
            stamp = await asyncio.to_thread(_stamp, self._file)
            if stamp is None or stamp == self._seen:
                continue
            await self._sleep(SETTLE_S)
            if await asyncio.to_thread(_stamp, self._file) == stamp:
                self.request()

    async def _retire(self, old: Gateway, generation: _Generation, drain_s: float) -> None:
        try:
            await asyncio.wait_for(generation.idle.wait(), drain_s)
        except TimeoutError:
            get_logger().warning(
                "closing the previous config with requests still using it",
                in_flight=generation.count,
                timeout_s=drain_s,
                pid=os.getpid(),
            )
        await _close(old)
        get_logger().info("previous config closed", pid=os.getpid())


async def _started(fresh: Gateway, live: Gateway) -> dict[str, str]:
    """Waits until every backend of ``fresh`` has loaded (local models load in the background), so that the
    switch costs no request a wait; returns the deployments that failed to start but work in ``live``."""
    waiting = [backend.id for backend in fresh.backends if not backend.ready]
    if waiting:
        get_logger().info(
            "config reload: waiting for deployments to load", deployments=waiting, pid=os.getpid()
        )
    while not all(backend.ready for backend in fresh.backends):  # noqa: ASYNC110 - backends expose a flag only
        await asyncio.sleep(0.1)
    working = {backend.id for backend in live.backends if backend.failure is None}
    return {
        backend.id: backend.failure
        for backend in fresh.backends
        if backend.failure is not None and backend.id in working
    }


async def _discard(fresh: Gateway, live: Gateway) -> None:
    await _close(fresh)
    # Building the rejected gateway published its deployments' state; put back the live one's.
    for (alias, deployment), enabled in _deployments(live.loaded).items():
        metrics.DEPLOYMENT_ENABLED.labels(alias, deployment).set(1 if enabled else 0)


def _deployments(loaded: LoadedConfig) -> dict[tuple[str, str], bool]:
    return {
        (alias.name, deployment.id): loaded.deployment_disabled_reason(alias.name, index) is None
        for alias in loaded.config.models
        for index, deployment in enumerate(alias.deployments)
    }


async def _close(gateway: Gateway) -> None:
    try:
        await gateway.close()
    except Exception:
        get_logger().exception("closing a replaced gateway failed", pid=os.getpid())


def _stamp(path: str) -> tuple[int, int, int] | None:
    # The inode too: editors and config managers often replace the file by renaming a new one onto it.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _warn_restart_fields(old: ServerConfig, new: ServerConfig) -> None:
    changed = [f"server.{name}" for name in RESTART_FIELDS if getattr(old, name) != getattr(new, name)]
    if changed:
        get_logger().warning(
            "config reload: these fields take effect only after a restart", fields=changed, pid=os.getpid()
        )
