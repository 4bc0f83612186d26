"""Fixtures shared by the gateway tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends.test_local import _start, _wait_ready
from tests.harness import ServerThread


@pytest.fixture(scope="module")
def local_gateway() -> Iterator[ServerThread]:
    """A gateway in front of the bundled engine serving SmolLM2 in-process, one per test module (each starts
    with an empty prefix cache: the Messages tests read the prompt's token count from the usage)."""
    server = _start("""
  - name: smollm2
    deployments:
      - provider: local
        model: SmolLM2-135M-Instruct
        engine: {max_num_seqs: 4, kv_cache_gib: 0.05, max_model_len: 256}
""")
    assert _wait_ready(server)["status"] == "ready"
    yield server
    server.stop()
