"""The semantic cache's embedder on ONNX Runtime: exported once from the sentence-transformers model, it gives
that model's vectors (the cache's thresholds were chosen on them) in a third of the time."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from policies.cache import embedder


def test_the_onnx_embedder_gives_the_models_own_vectors_exports_once_and_serves_without_torch(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    onnx = embedder.load_model()
    assert isinstance(onnx, embedder.OnnxEncoder)
    [exported] = (tmp_path / "llm-gateway").glob("*.onnx")
    written = exported.stat().st_mtime_ns
    reference = embedder.load_model(runtime="torch")
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
    assert list((tmp_path / "llm-gateway").glob("*.onnx")) == [exported]
    assert exported.stat().st_mtime_ns == written
