"""The bundled local engine inside the gateway process (``provider: local`` without ``api_base``).

The engine (torch) is imported and the model loaded in a worker thread after start-up, so the gateway
listens at once and a gateway without a local deployment never imports torch. Until the model is
loaded the backend is not ``ready`` (``/readyz`` says starting); a request that comes meanwhile waits
up to ``engine.load_timeout_s`` for it, then gets 503 with ``Retry-After``. Requests and answers are
OpenAI's shapes, built by ``local_engine.openai_api`` (the same code ``python -m local_engine serve``
runs), so both ways of running the engine answer alike. LoRA adapters (docs/lora.md) are named by a
``model`` holding ``:`` (the client's, else the deployment's) and added or removed through ``add_lora`` /
``remove_lora`` (the admin API).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from errors import GatewayError, InvalidRequest, ModelNotFound, NotFound, Unavailable, UpstreamError

from . import local_metrics as m
from . import spans, sse
from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig, LocalEngineSettings

if TYPE_CHECKING:
    from local_engine import AsyncEngine

_METRICS_INTERVAL_S = 1.0
_RETRY_AFTER_S = "5"


class LocalBackend(Backend):
    def __init__(self, deployment: DeploymentConfig) -> None:
        self.id = deployment.id
        self.deployment = deployment
        self.settings = deployment.engine or LocalEngineSettings()
        self.engine: AsyncEngine | None = None
        self._failure: str | None = None
        self._loading: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._counted: dict[str, float] = {}

    @property
    def ready(self) -> bool:
        return self.engine is not None or self._failure is not None

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def batch_window(self) -> int:
        # Twice the places: a full step's worth decoding and as many queued, so that the engine never waits
        # for the gateway to write an answer and send the next line (the KV cache then bounds what runs).
        places = self.settings.max_num_seqs
        if self.engine is not None:
            places = min(places, self.engine.engine.block_manager.num_blocks)
        return 2 * places

    async def start(self) -> None:
        self._loading = asyncio.create_task(self._load(), name=f"load {self.id}")

    async def _load(self) -> None:
        log = structlog.get_logger("gateway")
        model = self.deployment.model_path or "smollm2"
        log.info("local model loading", deployment=self.id, model_path=model)
        try:
            # The import too runs in the thread: importing torch takes the loop's thread for a second.
            engine = await asyncio.to_thread(
                _load_engine, model, self.settings.engine_options(), self.settings.loras
            )
        except Exception as exc:  # a broken model must not take the gateway down: this deployment answers 503
            self._failure = (
                f"the local engine needs its extra dependencies ({exc}): pip install torch==2.13.0 "
                "&& pip install -e '.[engine]'"
                if isinstance(exc, ImportError)
                else f"{type(exc).__name__}: {exc}"
            )
            log.error("local model failed to load", deployment=self.id, error=self._failure)
            return
        stats = engine.engine.metrics
        stats.on_ttft = m.TTFT.labels(self.id).observe
        stats.on_itl = m.ITL.labels(self.id).observe
        self.engine = engine
        self._sync_metrics()
        self._metrics_task = asyncio.create_task(self._metrics_loop(), name=f"metrics {self.id}")
        log.info(
            "local model loaded",
            deployment=self.id,
            model=engine.model_name,
            kv_blocks=engine.engine.block_manager.num_blocks,
            max_model_len=engine.engine.max_model_len,
        )

    async def close(self) -> None:
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
        if self._loading is not None:
            # A load runs in a thread that cannot be interrupted: let it end, then close what it built.
            await asyncio.shield(self._loading)
        if self.engine is not None:
            await self.engine.close()
            self.engine = None

    @asynccontextmanager
    async def send(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        if endpoint is Endpoint.EMBEDDINGS:
            raise InvalidRequest(
                f"The model behind deployment {self.id} (local engine) does not serve embeddings.",
                param="model",
                code="unsupported_endpoint",
            )
        engine = await self._engine()
        from local_engine.openai_api import complete_response, stream_response

        chat = endpoint is Endpoint.CHAT
        payload = {**payload, "model": lora_model(payload, self.deployment)}
        if not stream:
            with _spanned(spans.start("engine", self.deployment, self.id)), _mapped_errors():
                data = await complete_response(engine, payload, chat=chat, model_name=self.deployment.model)
            yield UpstreamResponse(status=200, body=orjson.dumps(data), data=data)
            return
        body = payload
        if self.deployment.stream_usage:
            # Usage on every stream, so that tokens are counted; the pipeline drops it if the client did not ask.
            options = payload.get("stream_options")
            body = {
                **payload,
                "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True},
            }
        chunks = stream_response(engine, body, chat=chat, model_name=self.deployment.model)
        with _spanned(spans.start("engine", self.deployment, self.id)):
            try:
                # The first chunk before answering, so that a bad request is an HTTP error, not an error event.
                with _mapped_errors():
                    first = await anext(chunks, None)
                yield UpstreamResponse(status=200, chunks=_sse(first, chunks))
            finally:
                # Also when the client went away: closing the generator aborts the sequence and frees its blocks.
                await chunks.aclose()

    async def add_lora(self, name: str, path: str) -> dict[str, Any]:
        """Register a PEFT adapter directory on the engine (checked now, loaded on first use)."""
        engine = await self._engine()
        from local_engine import LoRAError

        try:
            return _lora_view(await engine.add_lora(name, path))
        except LoRAError as exc:
            raise InvalidRequest(str(exc), param="lora_path") from None

    async def remove_lora(self, name: str) -> None:
        engine = await self._engine()
        from local_engine import LoRAError

        try:
            engine.remove_lora(name)
        except LoRAError as exc:
            raise NotFound(str(exc), param="lora_name") from None

    async def list_loras(self) -> list[dict[str, Any]]:
        engine = await self._engine()
        return [_lora_view(info) for info in engine.list_loras()]

    async def _engine(self) -> AsyncEngine:
        if self.engine is None and self._failure is None and self._loading is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._loading), self.settings.load_timeout_s)
            except TimeoutError:
                raise Unavailable(
                    f"The local model of deployment {self.id} is still loading; retry shortly.",
                    code="model_loading",
                    headers={"retry-after": _RETRY_AFTER_S},
                ) from None
        if self.engine is None:
            reason = f"failed to load ({self._failure})" if self._failure else "is not started"
            raise Unavailable(f"The local model of deployment {self.id} {reason}.", code="model_unavailable")
        return self.engine

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(_METRICS_INTERVAL_S)
            self._sync_metrics()

    def _sync_metrics(self) -> None:
        if self.engine is None:
            return
        snapshot: dict[str, Any] = self.engine.metrics
        blocks = self.engine.engine.block_manager
        snapshot = {**snapshot, "prefix_queries": blocks.prefix_queries, "prefix_hits": blocks.prefix_hits}
        for key, gauge in m.GAUGES.items():
            gauge.labels(self.id).set(snapshot[key] or 0)
        for key, counter in (
            *m.COUNTERS.items(),
            ("prefix_queries", m.PREFIX_QUERIED),
            ("prefix_hits", m.PREFIX_HITS),
        ):
            value = snapshot[key]
            delta = value - self._counted.get(key, 0)
            child = counter.labels(self.id)  # created at 0, so that every series exists from the start
            if delta > 0:
                child.inc(delta)
            self._counted[key] = value


def _load_engine(model: str, options: dict[str, Any], loras: dict[str, str]) -> AsyncEngine:
    from local_engine import AsyncEngine

    engine = AsyncEngine.from_model(model, **options)
    try:
        for name, path in loras.items():
            engine.engine.add_lora(name, path)
    except Exception:
        engine.shutdown()
        raise
    return engine


def lora_model(payload: dict[str, Any], deployment: DeploymentConfig) -> str:
    """The ``model`` the engine reads its LoRA adapter from: the client's when it names one (``ALIAS:ADAPTER``),
    else the deployment's (``BASE:ADAPTER`` maps an alias to an adapter; a plain name is the base model)."""
    model = payload.get("model")
    return model if isinstance(model, str) and ":" in model else deployment.model


def _lora_view(info: Any) -> dict[str, Any]:
    return {
        "object": "lora_adapter",
        "name": info.name,
        "path": info.path,
        "rank": info.rank,
        "alpha": info.alpha,
        "target_modules": list(info.target_modules),
        "resident": info.resident,
    }


async def _sse(first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    if first is not None:
        yield sse.data(orjson.dumps(first))
        with _mapped_errors():
            async for chunk in chunks:
                yield sse.data(orjson.dumps(chunk))
    yield sse.DONE


@contextlib.contextmanager
def _spanned(span: spans.Handle | None) -> Iterator[None]:
    """The engine's span (tracing on): from the request's arrival in the engine to its last token."""
    try:
        yield
    except GatewayError as exc:
        spans.end(span, exc.status, exc.message)
        raise
    else:
        spans.end(span, 200)


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """The engine's errors as the gateway's: a bad request is 400, a closed engine 503."""
    from local_engine import EngineClosedError, OpenAIError

    try:
        yield
    except OpenAIError as exc:
        error: GatewayError
        if exc.status == 400:
            error = InvalidRequest(exc.message, param=exc.param, code=exc.code)
        elif exc.code == "model_not_found":  # a LoRA adapter the engine does not have
            error = ModelNotFound(exc.message, param=exc.param)
        else:
            error = UpstreamError(
                exc.message, status=exc.status, error_type=exc.type, param=exc.param, code=exc.code
            )
        raise error from None
    except EngineClosedError as exc:
        raise Unavailable(f"The local engine stopped: {exc}", code="engine_unavailable") from None
