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

With ``engine.workers.disaggregated`` each worker is ``prefill`` ``serve --role prefill`` processes,
``decode`` ``serve --role decode`` ones, ``both`` ordinary ones (the router's fallback) and a ``route`` in
front of them (docs/disaggregation.md); the pool speaks to the router and starts, scales and stops them as
one. An engine process that dies while the rest can still serve (a prefill and a decode process, or a
``both`` one, and the router) is started again on its port, the worker serving meanwhile; otherwise the
worker counts as dead and is replaced whole.

A stream whose worker dies after its first chunk goes on from another worker, up to ``resumes`` times: the
pool asks each worker for the token ids behind every chunk (``return_token_ids``, taken out before the client
sees them) and sends the request again with those it relayed as ``continue_token_ids``; the engine goes on
from them as if it had generated them, and the new worker's chunks join the client's stream as its own
(docs/deploy.md, "A managed worker that dies mid-stream").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
import structlog
from prometheus_client import Counter, Gauge, Histogram

from errors import InvalidRequest, NotFound, Unavailable, UpstreamConnectionError, UpstreamError

from . import sse
from .base import Backend, Endpoint, UpstreamResponse
from .coalesce import Coalescer
from .config import DeploymentConfig, EngineWorkers, LocalEngineSettings
from .http import client_timeout
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
STREAM_RESUMES = Counter(
    "gateway_engine_worker_stream_resumes_total",
    "Streams whose engine worker died after their first chunk, gone on from another worker",
    ["deployment"],
)
ENGINE_RESTARTS = Counter(
    "gateway_engine_worker_process_restarts_total",
    "Engine processes started again inside a disaggregated worker that kept serving, by role",
    ["deployment", "role"],
)

_CHECK_INTERVAL_S = 0.2  # how often the pool looks for idle and dead workers (real time)
_RETRY_AFTER_S = "5"


class MonotonicClock(Protocol):
    """What the pool reads of ``policies.clock.Clock`` (backends do not import policies)."""

    def monotonic(self) -> float: ...


@dataclass(eq=False)
class Engine:
    """One ``serve`` process of a worker, by role: ``both`` is the ordinary server."""

    role: str
    port: int
    process: asyncio.subprocess.Process | None = None
    restarting: bool = False  # started again after it died, not yet healthy

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass(eq=False)
class Worker:
    name: str
    port: int  # where the pool sends requests: the engine, or a disaggregated worker's router
    backend: OpenAIBackend
    started_at: float
    engines: list[Engine]
    router: asyncio.subprocess.Process | None = None  # a disaggregated worker's, in front of its engines
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
        return [p for p in (self.router, *(e.process for e in self.engines)) if p is not None]

    @property
    def intact(self) -> bool:
        return all(p.returncode is None for p in self.processes)  # none yet: not spawned

    @property
    def serving(self) -> bool:
        """It can answer: its router (if any) runs, and a ``both`` engine or a prefill and a decode one do."""
        if self.router is not None and self.router.returncode is not None:
            return False
        roles = {e.role for e in self.engines if e.alive}
        return "both" in roles or {"prefill", "decode"} <= roles


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
        self._restarts: set[asyncio.Task[None]] = set()  # engine processes started again in a running worker
        # workers' processes being stopped, awaited by close()
        self._stopping: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loras: dict[str, str] = dict(self.settings.loras)  # name -> adapter directory
        # batch lines many per HTTP request (a disaggregated worker's router serves no /v1/batch)
        window = 0.0 if self.limits.disaggregated else self.limits.coalesce_ms / 1000
        self._coalescer = Coalescer(
            self.id,
            pool,
            client_timeout(deployment),
            window_s=window,
            max_lines=2 * self.settings.max_num_seqs,
        )

    @property
    def starting(self) -> bool:
        """A worker is starting (``/readyz`` lists the deployment under ``starting``)."""
        return any(not w.ready for w in self._workers)

    @property
    def batch_window(self) -> int:
        # Each worker's engine full (its places, as many again queued): the pool starts workers up to ``max``
        # as the lines in flight pass ``target_inflight``. The lines bound for a worker travel many per HTTP
        # request (backends/coalesce.py).
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
        # an engine process being started again ends once it sees its worker gone (terminating itself)
        await asyncio.gather(*list(self._restarts))
        # and the workers whose stop (idle, died) began before, in the watch task just cancelled: reaped
        # before the loop goes
        await asyncio.gather(*list(self._stopping))
        await self._coalescer.close()

    @asynccontextmanager
    async def send(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        key = prompt_prefix(payload)
        model = lora_model(payload, self.deployment)
        splice = None
        if stream and self._resumable(endpoint, payload):
            splice = _Splice(endpoint is Endpoint.CHAT, payload.get("return_token_ids") is True)
            payload = {**payload, "return_token_ids": True}
        # the workers' requests (a resumed stream's too), each released when the answer is done with
        async with contextlib.AsyncExitStack() as held:
            for attempt in range(2):
                worker = await self._acquire(key)
                try:
                    if self._coalescer.applies(endpoint, payload, stream=stream):
                        sent = self._coalescer.send(worker.backend, endpoint, {**payload, "model": model})
                    else:
                        sent = worker.backend_for(model, self._pool).send(endpoint, payload, stream=stream)
                    response = await held.enter_async_context(sent)
                except UpstreamError as exc:
                    self._release(worker)
                    # A process of the worker died before answering: send the request once more, to another
                    # worker or to what is left of this one. A disaggregated worker's router answers 502/503
                    # when the engine it sent the request to is gone.
                    gone = isinstance(exc, UpstreamConnectionError) or (
                        worker.router is not None and exc.status in (502, 503)
                    )
                    if attempt == 1 or not gone or not await self._lost(worker):
                        raise
                    continue
                except BaseException:
                    self._release(worker)
                    raise
                held.callback(self._release, worker)
                break
            if splice is not None and response.chunks is not None:
                response.chunks = self._resuming(
                    splice, held, worker, response.chunks, key, model, endpoint, payload
                )
            yield response

    def _resumable(self, endpoint: Endpoint, payload: dict[str, Any]) -> bool:
        """Whether a stream of ``payload`` can go on from another worker, should its worker die midway: one
        choice, no logprobs, no tools (the engine's tool-call parser holds text back, and a call may be half
        sent), not a seeded sample (its random draws cannot be had again from the middle), and a worker
        that is one engine process (a disaggregated worker's prefill does not take a continuation)."""
        if not self.limits.resumes or self.limits.disaggregated:
            return False
        if endpoint is Endpoint.CHAT:
            logprobs = bool(payload.get("logprobs") or payload.get("top_logprobs"))
        elif endpoint is Endpoint.COMPLETIONS:
            logprobs = payload.get("logprobs") is not None
        else:
            return False
        return not (
            logprobs
            or payload.get("n") not in (None, 1)
            or (payload.get("tools") and payload.get("tool_choice") != "none")
            or (payload.get("seed") is not None and payload.get("temperature") != 0)
        )

    async def _resuming(
        self,
        splice: _Splice,
        held: contextlib.AsyncExitStack,
        worker: Worker,
        chunks: AsyncIterator[bytes] | None,
        key: str,
        model: str,
        endpoint: Endpoint,
        payload: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        """The worker's stream as the client gets it (whole events, the token ids taken out); when the worker
        dies midway (its connection broke and a process of it exited), the request sent to another worker
        with the ids relayed so far as its continuation, and that stream's chunks relayed as this one's."""
        resumes = 0
        before = payload.get("continue_token_ids") or []  # a continuation the client itself asked for
        while True:
            try:
                if chunks is None:
                    body = {**payload, "continue_token_ids": [*before, *splice.ids]}
                    response = await held.enter_async_context(
                        worker.backend_for(model, self._pool).send(endpoint, body, stream=True)
                    )
                    assert response.chunks is not None
                    chunks = response.chunks
                decoder = sse.Decoder()
                async for piece in chunks:
                    if out := splice.take(decoder.feed(piece)):
                        yield out
                if out := splice.take(decoder.close()):
                    yield out
                return
            except UpstreamConnectionError:
                if resumes >= self.limits.resumes or not splice.resumable or not await self._lost(worker):
                    raise
            resumes += 1
            STREAM_RESUMES.labels(self.id).inc()
            structlog.get_logger("gateway").warning(
                "engine worker died mid-stream; going on from another worker",
                deployment=self.id,
                worker=worker.name,
                relayed_tokens=len(splice.ids),
            )
            worker = await self._acquire(key)
            held.callback(self._release, worker)
            chunks = None

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
        return [w for w in self._workers if w.ready and w.serving]

    async def _post(self, worker: Worker, route: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """``POST /v1/{route}`` to each of the worker's running engines (every role of a disaggregated one;
        one being started again gets the pool's adapters when it is up), the first refusal answering."""
        ports = [e.port for e in worker.engines if e.alive and not e.restarting]
        return await _post_each(ports, route, body)

    async def _load_loras(self, worker: Worker, loras: dict[str, str], ports: list[int]) -> None:
        """``loras`` onto the engines at ``ports`` of a worker not yet taking them, a refusal logged."""
        for name, path in loras.items():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, body = await _post_each(
                    ports, "load_lora_adapter", {"lora_name": name, "lora_path": path}
                )
                if status != 200:
                    structlog.get_logger("gateway").error(
                        "engine worker refused a LoRA adapter",
                        deployment=self.id,
                        worker=worker.name,
                        lora=name,
                        error=_message(body, status),
                    )

    async def _acquire(self, key: str) -> Worker:
        deadline = self._loop_time() + self.settings.load_timeout_s
        async with self._changed:
            while True:
                ready = [w for w in self._workers if w.ready and w.serving]
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
        limits = self.limits
        if limits.disaggregated:
            roles = {"prefill": limits.prefill, "decode": limits.decode, "both": limits.both}
            engines = [Engine(role, _free_port()) for role, n in roles.items() for _ in range(n)]
        else:
            engines = [Engine("both", port)]
        worker = Worker(
            name=name,
            port=port,
            backend=OpenAIBackend(worker_deployment, self._pool),
            started_at=self._clock.monotonic(),
            engines=engines,
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
        for engine in worker.engines:
            engine.process = await _exec("serve", *self._engine_args(engine))
        log.info(
            "engine worker starting",
            deployment=self.id,
            worker=worker.name,
            pids=[p.pid for p in worker.processes],
            roles=[e.role for e in worker.engines],
        )
        waits = [self._wait_healthy(e.port, deadline, lambda: worker.intact) for e in worker.engines]
        healthy = all(await asyncio.gather(*waits))
        if healthy and self.limits.disaggregated:
            healthy = await self._start_router(worker, deadline)
        if not healthy:
            log.error(
                "engine worker failed to start",
                deployment=self.id,
                worker=worker.name,
                exit_codes=[p.returncode for p in worker.processes],
            )
            await self._stop(worker, "failed")
            return
        await self._load_loras(worker, dict(self._loras), [e.port for e in worker.engines])
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

    async def _start_router(self, worker: Worker, deadline: float) -> bool:
        """The router in front of the worker's engines, on the worker's port, once they all answer (it checks
        nothing at start, so it starts last)."""
        urls = [f"--{e.role}=http://127.0.0.1:{e.port}" for e in worker.engines]
        worker.router = await _exec(
            "route",
            *urls,
            "--host",
            "127.0.0.1",
            "--port",
            str(worker.port),
            # the engines queue what they cannot run yet; the pool's target_inflight scales out
            "--max-inflight",
            str(2 * self.settings.max_num_seqs),
        )
        return await self._wait_healthy(worker.port, deadline, lambda: worker.intact)

    async def _wait_healthy(self, port: int, deadline: float, running: Callable[[], bool]) -> bool:
        url = f"http://127.0.0.1:{port}/health"
        async with aiohttp.ClientSession() as session:
            while self._loop_time() < deadline and running():
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            return True
                await asyncio.sleep(0.1)
        return False

    def _engine_args(self, engine: Engine, loras: dict[str, str] | None = None) -> list[str]:
        """``serve``'s flags for ``engine``: the deployment's ``engine`` settings, its role when the worker is
        disaggregated, and ``loras`` to load before it listens."""
        args = self._serve_args(engine.port)
        if self.limits.disaggregated:
            args += ["--role", engine.role, "--kv-transport", self.limits.kv_transport]
        return args + [f"--lora={name}={path}" for name, path in (loras or {}).items()]

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
                if not worker.ready:
                    continue
                if not worker.serving:
                    await self._stop(worker, "died")
                    continue
                for engine in worker.engines:
                    if not engine.alive and not engine.restarting:
                        self._restart(worker, engine)
                if (
                    worker.inflight == 0
                    and now - worker.last_used >= self.limits.idle_s
                    and len(self._workers) > self.limits.min
                ):
                    await self._stop(worker, "idle")
            while len(self._workers) < self.limits.min and self._spawn() is not None:
                pass

    def _restart(self, worker: Worker, engine: Engine) -> None:
        engine.restarting = True
        task = asyncio.create_task(self._rerun(worker, engine), name=f"restart {self.id} {worker.name}")
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _rerun(self, worker: Worker, engine: Engine) -> None:
        """The dead ``engine`` of a worker still serving started again on its port (where its router looks
        for it), with the pool's LoRA adapters; a worker whose engine does not come back is replaced."""
        log = structlog.get_logger("gateway")
        assert engine.process is not None
        log.warning(
            "engine worker process died; starting it again",
            deployment=self.id,
            worker=worker.name,
            role=engine.role,
            exit_code=engine.process.returncode,
        )
        loras = dict(self._loras)
        deadline = self._loop_time() + self.limits.start_timeout_s
        engine.process = await _exec("serve", *self._engine_args(engine, loras))
        if worker not in self._workers:  # stopped meanwhile, with the dead process
            await _terminate(engine.process)
            return
        healthy = await self._wait_healthy(
            engine.port, deadline, lambda: engine.alive and worker in self._workers
        )
        if worker not in self._workers:  # its stop terminated the new process
            return
        if not healthy:
            log.error("engine worker process failed to start again", deployment=self.id, worker=worker.name)
            await self._stop(worker, "failed")
            return
        engine.restarting = False
        # adapters added or removed while it started
        await self._load_loras(
            worker, {n: p for n, p in self._loras.items() if n not in loras}, [engine.port]
        )
        for name in loras.keys() - self._loras.keys():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await _post_each([engine.port], "unload_lora_adapter", {"lora_name": name})
        ENGINE_RESTARTS.labels(self.id, engine.role).inc()
        log.info(
            "engine worker process started again", deployment=self.id, worker=worker.name, role=engine.role
        )

    async def _lost(self, worker: Worker) -> bool:
        """Whether a process of the worker died (a request it failed may be sent again); a worker left unable
        to serve is stopped, one that still can keeps serving while the watch loop starts the process again."""
        if not worker.processes:
            return False
        exits = [asyncio.ensure_future(p.wait()) for p in worker.processes]
        # a killed process is reaped within moments
        _, waiting = await asyncio.wait(exits, timeout=2, return_when=asyncio.FIRST_COMPLETED)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        if worker.intact:
            return False
        if not worker.serving:
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


class _Splice:
    """What a resumable stream relayed: the token ids behind its chunks (the continuation, should its worker
    die), whether it can still go on elsewhere, and the first chunk's id, created and model, which every chunk
    of the stream carries, a continuation's too (without a second role delta)."""

    __slots__ = ("chat", "head", "ids", "keep_ids", "resumable", "role_sent")

    def __init__(self, chat: bool, keep_ids: bool) -> None:
        self.chat = chat
        self.keep_ids = keep_ids  # the client asked for the token ids itself
        self.ids: list[int] = []
        self.resumable = True
        self.head: dict[str, Any] | None = None
        self.role_sent = False

    def take(self, events: list[sse.Event]) -> bytes:
        out = []
        for event in events:
            data = event.data
            chunk = None
            if data[:1] == b"{":
                with contextlib.suppress(orjson.JSONDecodeError):
                    chunk = orjson.loads(data)
            if isinstance(chunk, dict):
                self._take(chunk)
                data = orjson.dumps(chunk)
            elif not event.done:
                self.resumable = False  # not a chunk we can follow
            out.append(sse.encode(data, event.event))
        return b"".join(out)

    def _take(self, chunk: dict[str, Any]) -> None:
        choices = chunk.get("choices")
        if "error" in chunk or not isinstance(choices, list):
            self.resumable = False  # the engine's own error event: the stream ends with it
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            ids = choice.get("token_ids") if self.keep_ids else choice.pop("token_ids", None)
            if choice.get("index", 0) != 0 or not isinstance(ids, list):
                self.resumable = False
            else:
                self.ids.extend(ids)
            if choice.get("finish_reason") is not None:
                self.resumable = False  # the answer is whole: nothing to go on with
            delta = choice.get("delta") if self.chat else None
            if isinstance(delta, dict):
                if delta.get("tool_calls"):
                    self.resumable = False
                if "role" in delta:
                    if self.role_sent:
                        del delta["role"]  # a continuation's first chunk
                    self.role_sent = True
        if self.head is None:
            self.head = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
        else:
            chunk.update(self.head)


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


async def _post_each(ports: list[int], route: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """``POST /v1/{route}`` to the engine at each of ``ports``, the first refusal answering."""
    status, answer = 200, {}
    async with aiohttp.ClientSession() as session:
        for port in ports:
            url = f"http://127.0.0.1:{port}/v1/{route}"
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=60)) as response:
                status, answer = response.status, await response.json(content_type=None)
            if status != 200:
                break
    return status, answer


def _message(body: dict[str, Any], status: int) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message")) if isinstance(error, dict) else f"the engine worker answered {status}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
