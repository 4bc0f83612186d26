"""The semantic cache's embedder on ONNX Runtime: exported once from the sentence-transformers model, it gives
that model's vectors (the cache's thresholds were chosen on them) in a third of the time."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policies.cache import embedder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any, Any]]:
    """A cache folder of this module's own (the export is written there), the ONNX model and the torch one."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
        onnx = embedder.load_model()
        yield cache, onnx, embedder.load_model(runtime="torch")


def test_the_onnx_embedder_gives_the_models_own_vectors_exports_once_and_serves_without_torch(models):
    cache, onnx, reference = models
    assert isinstance(onnx, embedder.OnnxEncoder)
    [exported] = (cache / "llm-gateway").glob("*.onnx")
    written = exported.stat().st_mtime_ns
    texts = [
        "What is the capital of France?",
        "shift a << 2, not a >> 2",
        "",
        "word " * 400,  # past the model's 256 tokens: truncated the same way
        "  Ünïcode ÀCCENTS, MiXeD case, 東京の天気, emoji 🙂 and\ttabs  ",  # the tokenizer's normaliser
        *[f"question number {i} about paged attention" for i in range(70)],  # more than one batch
    ]
    ours, theirs = embedder.encode(onnx, texts), embedder.encode(reference, texts)
    assert ours.shape == (len(texts), embedder.DIMENSIONS) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5
    # one at a time (no padding) as in a batch
    assert np.abs(embedder.encode(onnx, texts[:1]) - ours[:1]).max() < 1e-5
    # a second process reuses the export, and reads the model's tokenizer and settings itself: with the semantic
    # cache on, a gateway keeps torch and transformers (hundreds of MB, seconds of start-up) out of memory; only
    # the one-off export process imports them
    script = (
        "import sys\n"
        "from policies.cache import embedder\n"
        "model = embedder.load_model()\n"
        "assert isinstance(model, embedder.OnnxEncoder)\n"
        "assert embedder.encode(model, ['hello']).shape == (1, embedder.DIMENSIONS)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert list((cache / "llm-gateway").glob("*.onnx")) == [exported]
    assert exported.stat().st_mtime_ns == written


def test_texts_of_every_length_in_one_call_get_the_vectors_each_gets_alone_in_the_callers_order(models):
    """The model runs a list longest first in batches of like length: each text still gets its own vector, in
    its place in the list, on ONNX Runtime as on torch."""
    _, onnx, reference = models
    texts = ["word " * 400, "", *(" ".join(["tokens"] * n) for n in (1, 2, 3, 5, 8, 13, 30, 60, 120, 250))]
    texts += [f"question {i}" for i in range(70)]  # more than a batch of one length
    random.Random(7).shuffle(texts)
    for model in (onnx, reference):
        together = embedder.encode(model, texts)
        alone = np.concatenate([embedder.encode(model, [text]) for text in texts])
        assert together.shape == (len(texts), embedder.DIMENSIONS)
        assert np.abs(together - alone).max() < 1e-5
