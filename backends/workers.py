"""The local engine as a pool of managed worker processes (``provider: local`` with ``engine.workers``).

Each worker is a ``python -m local_engine serve`` on a loopback port, spoken to in OpenAI's format through
:class:`OpenAIBackend`. The pool starts a worker when a request finds none (the request waits up to
``engine.load_timeout_s``), starts another while every worker holds ``target_inflight`` requests, stops a
worker idle for ``idle_s`` down to ``min`` (zero by default), and replaces one that dies: a request whose
worker died before answering is sent once more, to another worker. Requests are routed by their prompt's
first characters on a consistent-hash ring with bounded load, so that prompts sharing a prefix meet the
worker whose prefix cache holds it (:mod:`backends.prefix_ring`). LoRA adapters (docs/lora.md) are the
pool's list: each running worker gets one when it is added (``/v1/load_lora_adapter``), each new worker
all of them before it takes requests.

With ``engine.workers.disaggregated`` each worker is three processes: a ``serve --role prefill``, a
``serve --role decode`` and a ``route`` in front of them (docs/disaggregation.md); the pool speaks to the
router, starts, scales and stops the three as one, and counts the worker dead when any of them dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog
from prometheus_client import Counter, Gauge, Histogram

from errors import InvalidRequest, NotFound, Unavailable, UpstreamConnectionError, UpstreamError

from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig, EngineWorkers, LocalEngineSettings
from .local import lora_model
from .openai import OpenAIBackend
from .pool import SessionPool
from .prefix_ring import PrefixRing, prompt_prefix

COLD_START = Histogram(
    "gateway_engine_worker_cold_start_seconds",
    "From starting an engine worker process to its first healthy answer",
    ["deployment"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)
WORKERS = Gauge(
    "gateway_engine_workers",
    "Engine worker processes by state (starting, ready)",
    ["deployment", "state"],
    multiprocess_mode="livesum",
)
WORKER_REQUESTS = Counter(
    "gateway_engine_worker_requests_total", "Requests sent to each engine worker", ["deployment", "worker"]
)
WORKER_EXITS = Counter(
    "gateway_engine_worker_exits_total",
    "Engine workers stopped, by reason (idle, died, failed)",
    ["deployment", "reason"],
)

_CHECK_INTERVAL_S = 0.2  # how often the pool looks for idle and dead workers (real time)
_RETRY_AFTER_S = "5"


class MonotonicClock(Protocol):
    """What the pool reads of ``policies.clock.Clock`` (backends do not import policies)."""

    def monotonic(self) -> float: ...


@dataclass(eq=False)
class Worker:
    name: str
    port: int  # where the pool sends requests: the engine, or a disaggregated worker's router
    process: asyncio.subprocess.Process | None  # that port's process
    backend: OpenAIBackend
    started_at: float
    engine_ports: list[int] = field(default_factory=list)  # the engines' (prefill and decode when split)
    helpers: list[asyncio.subprocess.Process] = field(default_factory=list)  # a router's prefill and decode
    ready: bool = False
    inflight: int = 0
    last_used: float = 0.0
    became_ready: asyncio.Event = field(default_factory=asyncio.Event)
    by_model: dict[str, OpenAIBackend] = field(default_factory=dict)  # a backend per LoRA model name

    def backend_for(self, model: str, pool: SessionPool) -> OpenAIBackend:
        """The worker's backend sending ``model`` (OpenAIBackend writes its deployment's model in every request)."""
        if model == self.backend.deployment.model:
            return self.backend
        if model not in self.by_model:
            deployment = self.backend.deployment.model_copy(update={"model": model})
            self.by_model[model] = OpenAIBackend(deployment, pool)
        return self.by_model[model]

    @property
    def processes(self) -> list[asyncio.subprocess.Process]:
        return [p for p in (self.process, *self.helpers) if p is not None]

    @property
    def alive(self) -> bool:
        return all(p.returncode is None for p in self.processes)  # none yet: not spawned


class WorkerPool(Backend):
    def __init__(self, deployment: DeploymentConfig, pool: SessionPool, clock: MonotonicClock) -> None:
        self.id = deployment.id
        self.deployment = deployment
        self.settings = deployment.engine or LocalEngineSettings()
        assert self.settings.workers is not None
        self.limits: EngineWorkers = self.settings.workers
        self._pool = pool
        self._clock = clock
        self._workers: list[Worker] = []
        self._ring = PrefixRing()
        self._names = itertools.count()
        self._changed = asyncio.Condition()
        self._watch: asyncio.Task[None] | None = None
        self._starts: set[asyncio.Task[None]] = set()
        # workers' processes being stopped, awaited by close()
        self._stopping: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loras: dict[str, str] = dict(self.settings.loras)  # name -> adapter directory

    @property
    def starting(self) -> bool:
        """A worker is starting (``/readyz`` lists the deployment under ``starting``)."""
        return any(not w.ready for w in self._workers)

    @property
    def batch_window(self) -> int:
        # Each worker's engine full (its places, as many again queued): the pool starts workers up to ``max``
        # as the lines in flight pass ``target_inflight``. Each line is still one request to a worker.
        return 2 * self.settings.max_num_seqs * self.limits.max

    @property
    def workers(self) -> list[Worker]:
        return list(self._workers)

    async def start(self) -> None:
        for _ in range(self.limits.min):
            self._spawn()
        self._watch = asyncio.create_task(self._watch_loop(), name=f"workers {self.id}")

    async def close(self) -> None:
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for task in list(self._starts):
            task.cancel()
        await asyncio.gather(*self._starts, return_exceptions=True)
        await asyncio.gather(*(self._stop(w, "shutdown") for w in list(self._workers)))
        # and the workers whose stop (idle, died) began before, in the watch task just cancelled: reaped
        # before the loop goes
        await asyncio.gather(*list(self._stopping))

    @asynccontextmanager
    async def send(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        key = prompt_prefix(payload)
        model = lora_model(payload, self.deployment)
        tried: Worker | None = None
        for attempt in range(2):
            worker = await self._acquire(key, avoid=tried)
            try:
                async with worker.backend_for(model, self._pool).send(
                    endpoint, payload, stream=stream
                ) as response:
                    yield response
                    return
            except UpstreamError as exc:
                # A worker that died before answering: replace it and send the request once more. A
                # disaggregated worker's router answers 502/503 when its prefill or decode process is gone.
                gone = isinstance(exc, UpstreamConnectionError) or (
                    bool(worker.helpers) and exc.status in (502, 503)
                )
                if attempt == 1 or not gone or not await self._died(worker):
                    raise
                tried = worker
            finally:
                self._release(worker)

    async def add_lora(self, name: str, path: str) -> dict[str, Any]:
        """Add a LoRA adapter to every running worker (a bad one is refused by the first) and to later ones."""
        view: dict[str, Any] = {"object": "lora_adapter", "name": name, "path": path}
        for worker in self._running():
            status, body = await self._post(
                worker, "load_lora_adapter", {"lora_name": name, "lora_path": path}
            )
            if status != 200:
                raise InvalidRequest(_message(body, status), param="lora_path")
            view = {**body, "resident": False}
        self._loras[name] = path
        return view

    async def remove_lora(self, name: str) -> None:
        if name not in self._loras:
            raise NotFound(f"no LoRA adapter named {name!r}", param="lora_name")
        del self._loras[name]
        for worker in self._running():
            await self._post(worker, "unload_lora_adapter", {"lora_name": name})

    async def list_loras(self) -> list[dict[str, Any]]:
        return [{"object": "lora_adapter", "name": name, "path": path} for name, path in self._loras.items()]

    def _running(self) -> list[Worker]:
        return [w for w in self._workers if w.ready and w.alive]

    async def _post(self, worker: Worker, route: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """``POST /v1/{route}`` to each of the worker's engines (both sides of a disaggregated one), the first
        refusal answering."""
        status, answer = 200, {}
        async with aiohttp.ClientSession() as session:
            for port in worker.engine_ports:
                url = f"http://127.0.0.1:{port}/v1/{route}"
                async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=60)) as response:
                    status, answer = response.status, await response.json(content_type=None)
                if status != 200:
                    break
        return status, answer

    async def _acquire(self, key: str, avoid: Worker | None) -> Worker:
        deadline = self._loop_time() + self.settings.load_timeout_s
        async with self._changed:
            while True:
                ready = [w for w in self._workers if w.ready and w.alive and w is not avoid]
                if ready:
                    worker = self._ring.pick(key, ready, floor=self.limits.target_inflight)
                    worker.inflight += 1
                    WORKER_REQUESTS.labels(self.id, worker.name).inc()
                    if all(w.inflight >= self.limits.target_inflight for w in ready):
                        self._scale_out()
                    return worker
                if not any(not w.ready for w in self._workers):
                    if self._spawn() is None:
                        raise Unavailable(
                            f"No engine worker of deployment {self.id} can start.", code="model_unavailable"
                        )
                remaining = deadline - self._loop_time()
                if remaining <= 0:
                    raise Unavailable(
                        f"The engine worker of deployment {self.id} is still starting; retry shortly.",
                        code="model_loading",
                        headers={"retry-after": _RETRY_AFTER_S},
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def _release(self, worker: Worker) -> None:
        worker.inflight -= 1
        worker.last_used = self._clock.monotonic()

    def _scale_out(self) -> None:
        if not any(not w.ready for w in self._workers):
            self._spawn()

    def _spawn(self) -> Worker | None:
        if self._closing or len(self._workers) >= self.limits.max:
            return None
        port = _free_port()
        name = f"w{next(self._names)}"
        worker_deployment = self.deployment.model_copy(
            update={
                "api_base": f"http://127.0.0.1:{port}/v1",
                "engine": None,
                "model_path": None,
                "name": f"{self.id}#{name}",
                "api_key": None,
            }
        )
        worker = Worker(
            name=name,
            port=port,
            process=None,
            backend=OpenAIBackend(worker_deployment, self._pool),
            started_at=self._clock.monotonic(),
        )
        self._workers.append(worker)
        task = asyncio.create_task(self._boot(worker), name=f"start {self.id} {name}")
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)
        self._count()
        return worker

    async def _boot(self, worker: Worker) -> None:
        log = structlog.get_logger("gateway")
        began = self._loop_time()
        deadline = began + self.limits.start_timeout_s
        if self.limits.disaggregated:
            healthy = await self._boot_disaggregated(worker, deadline)
        else:
            worker.engine_ports = [worker.port]
            worker.process = await _exec("serve", *self._serve_args(worker.port))
            log.info("engine worker starting", deployment=self.id, worker=worker.name, pid=worker.process.pid)
            healthy = await self._wait_healthy(worker, worker.port, deadline)
        if not healthy:
            log.error(
                "engine worker failed to start",
                deployment=self.id,
                worker=worker.name,
                exit_codes=[p.returncode for p in worker.processes],
            )
            await self._stop(worker, "failed")
            return
        for name, path in list(self._loras.items()):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, body = await self._post(
                    worker, "load_lora_adapter", {"lora_name": name, "lora_path": path}
                )
                if status != 200:
                    log.error(
                        "engine worker refused a LoRA adapter",
                        deployment=self.id,
                        worker=worker.name,
                        lora=name,
                        error=_message(body, status),
                    )
        COLD_START.labels(self.id).observe(self._loop_time() - began)
        worker.ready = True
        worker.last_used = self._clock.monotonic()
        worker.became_ready.set()
        self._ring.add(worker)
        log.info(
            "engine worker ready",
            deployment=self.id,
            worker=worker.name,
            cold_start_s=round(self._loop_time() - began, 3),
        )
        await self._notify()

    async def _boot_disaggregated(self, worker: Worker, deadline: float) -> bool:
        """A prefill and a decode engine, then, once both answer, the router in front of them on the worker's
        port (the router checks nothing at start, so it starts last)."""
        worker.engine_ports = [_free_port(), _free_port()]
        for port, role in zip(worker.engine_ports, ("prefill", "decode"), strict=True):
            args = ["--role", role, "--kv-transport", self.limits.kv_transport]
            worker.helpers.append(await _exec("serve", *self._serve_args(port), *args))
        structlog.get_logger("gateway").info(
            "engine worker starting",
            deployment=self.id,
            worker=worker.name,
            pids=[p.pid for p in worker.helpers],
            disaggregated=True,
        )
        waits = [self._wait_healthy(worker, port, deadline) for port in worker.engine_ports]
        if not all(await asyncio.gather(*waits)):
            return False
        prefill, decode = (f"http://127.0.0.1:{port}" for port in worker.engine_ports)
        worker.process = await _exec(
            "route",
            "--prefill",
            prefill,
            "--decode",
            decode,
            "--host",
            "127.0.0.1",
            "--port",
            str(worker.port),
            # the engines queue what they cannot run yet; the pool's target_inflight scales out
            "--max-inflight",
            str(2 * self.settings.max_num_seqs),
        )
        return await self._wait_healthy(worker, worker.port, deadline)

    async def _wait_healthy(self, worker: Worker, port: int, deadline: float) -> bool:
        url = f"http://127.0.0.1:{port}/health"
        async with aiohttp.ClientSession() as session:
            while self._loop_time() < deadline and worker.alive:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            return True
                await asyncio.sleep(0.1)
        return False

    def _serve_args(self, port: int) -> list[str]:
        s = self.settings
        args = [
            "--model",
            self.deployment.model_path or "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-num-seqs",
            str(s.max_num_seqs),
            "--max-num-batched-tokens",
            str(s.max_num_batched_tokens),
            "--max-background-seqs",
            "none" if s.max_background_seqs is None else str(s.max_background_seqs),
            "--block-size",
            str(s.block_size),
            "--kv-cache-gib",
            str(s.kv_cache_gib),
            "--device",
            s.device,
        ]
        if s.dtype is not None:
            args += ["--dtype", s.dtype]
        if not s.enable_prefix_caching:
            args.append("--no-prefix-caching")
        if s.speculative is not None:
            args += ["--speculative", s.speculative.model_dump_json(exclude_none=True)]
        if s.quantization is not None:
            args += ["--quantization", s.quantization]
        return [*args, "--max-loras", str(s.max_loras), "--max-lora-rank", str(s.max_lora_rank)]

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(_CHECK_INTERVAL_S)
            now = self._clock.monotonic()
            for worker in list(self._workers):
                if worker.ready and not worker.alive:
                    await self._stop(worker, "died")
                elif (
                    worker.ready
                    and worker.inflight == 0
                    and now - worker.last_used >= self.limits.idle_s
                    and len(self._workers) > self.limits.min
                ):
                    await self._stop(worker, "idle")
            while len(self._workers) < self.limits.min and self._spawn() is not None:
                pass

    async def _died(self, worker: Worker) -> bool:
        if not worker.processes:
            return False
        exits = [asyncio.ensure_future(p.wait()) for p in worker.processes]
        # a killed process is reaped within moments
        _, waiting = await asyncio.wait(exits, timeout=2, return_when=asyncio.FIRST_COMPLETED)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        if worker.alive:
            return False
        await self._stop(worker, "died")
        return True

    async def _stop(self, worker: Worker, reason: str) -> None:
        if worker not in self._workers:
            return
        self._workers.remove(worker)
        self._ring.remove(worker)
        WORKER_EXITS.labels(self.id, reason).inc()
        self._count()
        structlog.get_logger("gateway").info(
            "engine worker stopped", deployment=self.id, worker=worker.name, reason=reason
        )
        # A router and its engines together, in a task of its own: cancelling the caller (close() cancels
        # the watch task) must not leave a process terminated but never reaped.
        task = asyncio.create_task(_terminate(*worker.processes), name=f"stop {self.id} {worker.name}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        await asyncio.shield(task)
        await self._notify()

    async def _notify(self) -> None:
        self._count()
        async with self._changed:
            self._changed.notify_all()

    def _count(self) -> None:
        ready = sum(1 for w in self._workers if w.ready)
        WORKERS.labels(self.id, "ready").set(ready)
        WORKERS.labels(self.id, "starting").set(len(self._workers) - ready)

    @staticmethod
    def _loop_time() -> float:
        # Start-up deadlines are real time (a process takes real seconds to start), on the loop's clock.
        return asyncio.get_running_loop().time()


async def _exec(*args: str) -> asyncio.subprocess.Process:
    """``python -m local_engine ARGS`` as a child process."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "local_engine", *args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )


async def _terminate(*processes: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after 10 s, each reaped."""

    async def one(process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    await asyncio.gather(*(one(p) for p in processes))


def _message(body: dict[str, Any], status: int) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message")) if isinstance(error, dict) else f"the engine worker answered {status}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
