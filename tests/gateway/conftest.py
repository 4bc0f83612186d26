"""Fixtures shared by the gateway tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends.test_local import smollm2_server
from tests.harness import ServerThread


@pytest.fixture(scope="module")
def local_gateway() -> Iterator[ServerThread]:
    """A gateway in front of the bundled engine serving SmolLM2 in-process, one per test module (each starts
    with an empty prefix cache: the Messages tests read the prompt's token count from the usage)."""
    yield from smollm2_server("{max_num_seqs: 4, kv_cache_gib: 0.05, max_model_len: 256}")
