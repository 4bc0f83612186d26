"""Idle memory: a gateway imports the heavy libraries (torch, numpy, tokenizer data, botocore, Qdrant) only when
its config uses what needs them, so that a plain proxy stays small (bench/gateway_bench.py measures its RSS)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "numpy",
    "bpe_openai",
    "botocore",
    "sentence_transformers",
    "qdrant_edge",
    "qdrant_client",
    "local_engine",
)
PLAIN = """
models:
  - name: chat
    deployments: [{provider: openai, model: gpt-4o-mini, api_key: k}]
  - name: claude
    deployments: [{provider: anthropic, model: claude-3-5-haiku-latest, api_key: k}]
tenants:
  - name: acme
    keys: ["sha256:%s"]
""" % ("0" * 64)


def _imported(config: str) -> set[str]:
    code = (
        "import asyncio, sys\n"
        "from gateway.app import build_app\n"
        "from gateway.config import parse_config\n"
        f"app = build_app(parse_config({config!r}, env={{}}))\n"
        "async def start():\n"
        "    from gateway.keys import GATEWAY\n"
        "    await app[GATEWAY].start()\n"
        "    await app[GATEWAY].close()\n"
        "asyncio.run(start())\n"
        f"print('imported:', *(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("imported:"))
    return set(line.split()[1:])


def test_a_plain_proxy_imports_nothing_heavy() -> None:
    assert _imported(PLAIN) == set()


def test_a_token_limit_loads_the_tokenizer_and_nothing_else() -> None:
    limited = PLAIN.replace('    keys: ["sha256:', '    limits: {tpm: 10000}\n    keys: ["sha256:')
    assert _imported(limited) == {"bpe_openai"}
