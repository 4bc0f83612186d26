"""Start-up cost: without the semantic cache the gateway never imports torch or the embedding model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import asyncio, sys
from gateway.config import parse_config
from gateway.state import Gateway
from policies.stores import StoreLayer

async def main():
    gateway = Gateway.build(parse_config("cache: {enabled: true}\\n"), StoreLayer())
    await gateway.start()
    await gateway.close()

asyncio.run(main())
print(sorted(m for m in ("torch", "sentence_transformers", "numpy", "qdrant_edge") if m in sys.modules))
"""


def test_exact_cache_alone_loads_no_model() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
