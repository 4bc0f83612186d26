"""Serving: one process, or N worker processes sharing one port with SO_REUSEPORT.

SIGTERM (or SIGINT) stops accepting, lets in-flight requests and streams finish for up to
``drain_timeout_s``, then exits 0. SIGHUP reloads the config file (see reload.py). With workers, the
parent forwards both signals.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker

from aiohttp import web

from .config import LoadedConfig, load_config
from .keys import GATEWAY
from .logs import configure, get_logger
from .security.access import PRIVATE_PORTS
from .security.listener import ConnectionGuard, fd_budget
from .security.tls import server_context


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int
    workers: int


def serve(config_path: str | None, listen: Listen) -> int:
    """Run until SIGTERM; returns the exit code."""
    configure()
    if listen.workers == 1:
        return _run_worker(config_path, listen, reuse_port=False)
    if listen.port == 0:
        get_logger().error("several workers need a fixed port (--port 0 picks a different one per worker)")
        return 2
    # Every worker writes its metrics here; a scrape of any one of them sums all.
    made = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    try:
        return _supervise(config_path, listen)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def _run_worker(config_path: str | None, listen: Listen, *, reuse_port: bool) -> int:
    import uvloop

    configure()
    loaded = load_config(config_path)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve_app(loaded, listen, reuse_port=reuse_port, config_path=config_path))
    return 0


async def _serve_app(
    loaded: LoadedConfig, listen: Listen, *, reuse_port: bool, config_path: str | None
) -> None:
    from .app import build_app
    from .reload import Reloader

    log = get_logger()
    app = build_app(loaded)
    reloader = Reloader(app, config_path)
    app.middlewares.append(reloader.middleware)
    server = loaded.config.server
    drain = server.drain_timeout_s
    private = app[PRIVATE_PORTS] = {}
    # keepalive_timeout: aiohttp's timer runs from accept until a whole request head is in, then between
    # requests: the header timeout and the idle timeout in one.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=drain,
        keepalive_timeout=server.limits.header_timeout_s,
    )
    await runner.setup()
    guard = ConnectionGuard(server.limits, fd_budget(server.limits, server.upstream_max_connections))
    guard.install(runner.server)  # type: ignore[arg-type]  # set by setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by the supervisor while spawning
    try:
        ssl_context = server_context(server.tls) if server.tls is not None else None
        site = web.TCPSite(
            runner, listen.host, listen.port, reuse_port=reuse_port, backlog=4096, ssl_context=ssl_context
        )
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else listen.port
        for address, serves in (
            (server.admin_listen, frozenset({"admin", "metrics"})),
            (server.metrics_listen, frozenset({"metrics"})),
        ):
            if address is not None:
                host, _, private_port = address.rpartition(":")
                await web.TCPSite(runner, host.strip("[]"), int(private_port), reuse_port=reuse_port).start()
                private[int(private_port)] = serves
                log.info("listening (private)", host=host, port=int(private_port), serves=sorted(serves))
        for alias, index in loaded.disabled:
            log.warning(
                "deployment disabled", alias=alias, deployment=index, reason=loaded.disabled[(alias, index)]
            )
        log.info(
            "listening",
            host=listen.host,
            port=port,
            pid=os.getpid(),
            config=loaded.path,
            tls=ssl_context is not None,
            max_connections=guard.max_connections,
        )
        # after the loop's SIGTERM handler is in: a stop during the collection is the usual drain
        tune_gc()
        reloader.start()
        await stop.wait()
        log.info("draining", pid=os.getpid(), timeout_s=drain)
        app[GATEWAY].draining = True
    finally:
        # Closes the listener, waits for in-flight requests up to the drain timeout, then closes the rest.
        await runner.cleanup()
        await reloader.close()
        log.info("stopped", pid=os.getpid())


# Young collections after this many more container allocations than deallocations (CPython's default: 700).
GC_THRESHOLD = 10_000


def tune_gc() -> None:
    """The cyclic GC for a server, once it listens: what start-up made (modules, config, the app) is
    frozen out of every later collection, and young collections wait for 10,000 net allocations instead of
    700. With 50 requests in flight, a young collection every ~10 requests found their live objects, moved
    them up a generation and so fed full collections that scanned the whole heap: the GC took ~9% of the
    event loop's CPU and evicted what the requests' code had in cache (docs/performance.md, 2026-12-01).
    Garbage is rare (a few cycles in a hundred requests) and what it holds is freed at the next collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)


def _worker_entry(config_path: str | None, listen: Listen) -> None:
    # A SIGTERM that arrives while the worker is still starting (before its loop's handler is installed)
    # is a clean stop too, not a death by signal. The supervisor starts the worker with SIGTERM blocked,
    # so one sent while the spawned interpreter still imports this module waits here instead of killing it.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    sys.exit(_run_worker(config_path, listen, reuse_port=True))


def _supervise(config_path: str | None, listen: Listen) -> int:
    log = get_logger()
    load_config(config_path)  # fail here, once, rather than in every worker
    context = multiprocessing.get_context("spawn")
    stopping = False
    reload = False

    # The first spawn starts multiprocessing's resource tracker, which blocks and then unblocks SIGTERM
    # around its own start: inside start()'s masked window it would let the first worker's SIGTERM
    # through unmasked. Started here, before any mask.
    resource_tracker.ensure_running()

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker_entry, args=(config_path, listen), daemon=False)
        # The child inherits the mask: a SIGHUP or SIGTERM before its handler is installed waits instead
        # of killing it (the supervisor's own, if one comes meanwhile, is delivered at the unblock).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, signal.SIGTERM})
        return process

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_hangup(signum: int, _frame: object) -> None:
        nonlocal reload
        reload = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    workers = [start() for _ in range(listen.workers)]
    log.info(
        "supervising",
        workers=[w.pid for w in workers],
        port=listen.port,
        metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
    )
    while not stopping:
        time.sleep(0.2)
        if reload:
            reload = False
            pids = [w.pid for w in workers if w.pid is not None and w.is_alive()]
            log.info("reload requested; forwarding SIGHUP", workers=pids)
            for pid in pids:
                os.kill(pid, signal.SIGHUP)
        for i, worker in enumerate(workers):
            if not worker.is_alive() and not stopping:
                log.error("worker died; restarting", pid=worker.pid, exitcode=worker.exitcode)
                workers[i] = start()
    for worker in workers:
        if worker.pid is not None and worker.is_alive():
            os.kill(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.join()
    log.info("all workers stopped", exitcodes=[w.exitcode for w in workers])
    return 0 if all(w.exitcode == 0 for w in workers) else 1
