"""asyncio front for the engine: one background thread runs the step loop, off the event loop.

Callers iterate ``generate(...)``; leaving the iteration early (break, cancellation,
``aclose()``) aborts the request and frees its KV blocks at the next loop turn.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_engine.config import EngineConfig
from local_engine.engine import LLMEngine, Prompt, RequestError
from local_engine.kv_transfer import KVConnector, KVTransferError, LoadedKV, load_kv
from local_engine.lora import LoRAInfo
from local_engine.outputs import RequestOutput
from local_engine.sampling_params import SamplingParams


class EngineClosedError(RuntimeError):
    """The engine was closed, or its step loop died, while a request was running."""


class _Reserved:
    """Told to a handoff's caller once the engine holds blocks for its prompt."""


_RESERVED = _Reserved()


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException | _Reserved]

    def put(self, item: RequestOutput | BaseException | _Reserved) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's loop is gone; nobody is listening
            pass


def _put_all(items: list[tuple[_Stream, RequestOutput]]) -> None:
    for stream, out in items:
        stream.queue.put_nowait(out)


class AsyncEngine:
    """Serves many concurrent ``generate`` calls from one :class:`LLMEngine`."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._cv = threading.Condition()
        self._new: list[
            tuple[str, Prompt, SamplingParams, str | None, KVConnector | None, tuple[int, ...]]
        ] = []
        # handoffs waiting for blocks, and those whose KV arrived
        self._reserves: list[tuple[str, list[int], SamplingParams, str | None]] = []
        self._commits: list[tuple[str, LoadedKV, int]] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Stream] = {}
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="local-engine-step-loop", daemon=True)
        self._thread.start()

    @classmethod
    def from_model(cls, model: str | Path = "smollm2", **engine_options: Any) -> AsyncEngine:
        """Load ``model`` (HF dir, ``.gguf`` path or ``"smollm2"``) and start the step loop. Blocks while loading."""
        return cls(LLMEngine(model, EngineConfig(**engine_options)))

    @classmethod
    async def create(cls, model: str | Path = "smollm2", **engine_options: Any) -> AsyncEngine:
        """Like :meth:`from_model`, loading in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(cls.from_model, model, **engine_options)

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def metrics(self) -> dict[str, float | int | None]:
        """Running/waiting sequences, KV blocks used, prefix-cache hit rate, tokens/s, TTFT, ITL."""
        return self.engine.metrics.snapshot()

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render OpenAI chat messages to prompt text with the model's chat template."""
        return self.engine.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt
        )

    async def add_lora(self, name: str, path: str | Path) -> LoRAInfo:
        """Register a PEFT adapter directory as ``name`` (checked in a worker thread; loaded on first use)."""
        return await asyncio.to_thread(self.engine.add_lora, name, path)

    def remove_lora(self, name: str) -> None:
        """Unregister ``name``; requests already running with it finish."""
        self.engine.remove_lora(name)

    def list_loras(self) -> list[LoRAInfo]:
        return self.engine.list_loras()

    def resolve_lora(self, model: str | None) -> str | None:
        """The adapter a request's ``model`` names, None for the base; ``LoRAError`` for an unknown ``X:Y``."""
        return self.engine.resolve_lora(model)

    async def generate(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        lora: str | None = None,
        *,
        kv_save: KVConnector | None = None,
        kv_load: dict[str, Any] | None = None,
        continuation: Sequence[int] = (),
    ) -> AsyncGenerator[RequestOutput, None]:
        """Yield one :class:`RequestOutput` delta per new token; the last has ``done`` set.

        ``prompt`` is text, token ids or a list of chat messages; ``lora`` names an adapter (None: the
        base model). Raises :class:`RequestError` for a request the engine cannot take and
        :class:`EngineClosedError` on shutdown.
        With ``kv_save`` (a prefill worker) the prompt's KV goes to that connector when the request
        finishes and the last output carries ``kv_transfer_params``. With ``kv_load`` (a decode
        worker: a prefill worker's ``kv_transfer_params``) ``prompt`` is ignored: the engine takes
        blocks for the handed-off prompt, loads its KV and continues from its first token; it raises
        :class:`KVTransferError` when the KV cannot be had. ``continuation``: token ids an earlier run of
        this request generated, to go on from (``LLMEngine.add_request``); not with a handoff.
        """
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        handoff = None
        if kv_load is not None and continuation:
            raise RequestError("a continuation cannot come with a KV handoff")
        if kv_load is not None:
            try:
                handoff = ([int(t) for t in kv_load["layout"]["token_ids"]], int(kv_load["first_token"]))
            except (KeyError, TypeError, ValueError):
                raise RequestError("kv_transfer_params is not a prefill worker's handoff") from None
        with self._cv:
            if self._closed or self._error is not None:
                raise EngineClosedError("the engine is closed") from self._error
            if request_id in self._streams:
                raise RequestError(f"request id {request_id!r} is already running")
            self._streams[request_id] = stream
            if handoff is None:
                self._new.append((request_id, prompt, params, lora, kv_save, tuple(continuation)))
            else:
                self._reserves.append((request_id, handoff[0], params, lora))
            self._cv.notify()
        finished = False
        try:
            if handoff is not None and kv_load is not None:
                await self._load_handoff(request_id, stream, kv_load, *handoff)
            while True:
                item = await stream.queue.get()
                if isinstance(item, _Reserved):
                    continue
                if isinstance(item, BaseException):
                    finished = True  # the loop already dropped the request
                    raise item
                finished = item.done
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)

    async def _load_handoff(
        self, request_id: str, stream: _Stream, params: dict[str, Any], token_ids: list[int], first: int
    ) -> None:
        item = await stream.queue.get()  # blocks first: a prompt that cannot fit never costs a transfer
        if isinstance(item, BaseException):
            raise item
        loaded = await load_kv(params)
        try:
            if list(loaded.layout.token_ids) != token_ids:
                raise KVTransferError("the KV handoff was computed for another prompt")
            loaded.layout.check_fits(self.engine.runner.kv_caches)
        except (KVTransferError, ValueError):
            loaded.release()
            raise
        with self._cv:
            if self._closed:
                loaded.release()
                raise EngineClosedError("the engine is closed")
            self._commits.append((request_id, loaded, first))
            self._cv.notify()

    def abort(self, request_id: str) -> None:
        """Stop ``request_id`` and free its blocks; safe from any thread, for unknown ids too."""
        with self._cv:
            self._streams.pop(request_id, None)
            self._aborts.append(request_id)
            self._cv.notify()

    async def close(self) -> None:
        """Stop the step loop; running requests get :class:`EngineClosedError`."""
        await asyncio.to_thread(self.shutdown)

    def shutdown(self) -> None:
        """Blocking form of :meth:`close`, for synchronous code."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                with self._cv:
                    while not (
                        self._closed or self._new or self._aborts or self._commits or engine.has_unfinished()
                    ):
                        if self._reserves:  # handoffs waiting for blocks: retry as others free theirs
                            self._cv.wait(timeout=0.01)
                            break
                        self._cv.wait()
                    if self._closed:
                        break
                    new, self._new = self._new, []
                    aborts, self._aborts = self._aborts, []
                    reserves, self._reserves = self._reserves, []
                    commits, self._commits = self._commits, []
                # Adds before aborts: a caller may have left before its request was ever added.
                for rid, prompt, params, lora, saver, continuation in new:
                    try:
                        engine.add_request(rid, prompt, params, lora, continuation)
                    except (RequestError, ValueError) as e:
                        self._fail(rid, e)
                        continue
                    if saver is not None:
                        engine.kv_savers[rid] = functools.partial(saver.save, rid)
                self._reserve(reserves)
                for rid, loaded, first in commits:
                    try:
                        self._deliver(engine.complete_handoff(rid, loaded.tensor, first))
                    except (RequestError, ValueError) as e:
                        self._fail(rid, e)
                    finally:
                        loaded.release()
                for rid in aborts:
                    engine.abort_request(rid)
                if engine.has_unfinished():
                    self._deliver(engine.step())
                while engine.failed:
                    self._fail(*engine.failed.pop())
        except BaseException as e:  # the loop must not die silently: every caller hears of it
            self._error = e
        finally:
            if engine.loras is not None:
                engine.loras.shutdown()
            with self._cv:
                self._closed = True
                streams, self._streams = self._streams, {}
            err = EngineClosedError(
                "the engine stopped" if self._error is None else f"engine failed: {self._error!r}"
            )
            for stream in streams.values():
                stream.put(err)

    def _reserve(self, reserves: list[tuple[str, list[int], SamplingParams, str | None]]) -> None:
        waiting = []
        for rid, ids, params, lora in reserves:
            with self._cv:
                stream = self._streams.get(rid)
            if stream is None:  # its caller left already
                continue
            try:
                if self.engine.reserve_handoff(rid, ids, params, lora):
                    stream.put(_RESERVED)
                else:
                    waiting.append((rid, ids, params, lora))
            except (RequestError, ValueError) as e:
                self._fail(rid, e)
        if waiting:
            with self._cv:
                self._reserves[:0] = waiting

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        # One wake-up per event loop per step, not one per token: fewer thread switches
        # that would stall torch's worker threads on a small machine.
        batches: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput]]] = {}
        with self._cv:
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is None:
                    continue
                if out.done:
                    del self._streams[out.request_id]
                batches.setdefault(stream.loop, []).append((stream, out))
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed; nobody is listening
                pass

    def _fail(self, request_id: str, error: BaseException) -> None:
        with self._cv:
            stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.put(error)
