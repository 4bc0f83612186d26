from __future__ import annotations

from pathlib import Path

import pytest

from tests.local_engine.conftest import _build


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as a HF directory: a worker process loads it in a second or two."""
    return _build(tmp_path_factory.mktemp("tiny") / "llama", "llama")
