"""The names ``local_engine`` exports, and that it stays independent of the gateway."""

from __future__ import annotations

import ast
from pathlib import Path

import local_engine


def test_public_names() -> None:
    assert sorted(local_engine.__all__) == sorted(
        [
            "LLM",
            "AsyncEngine",
            "Completion",
            "EngineClosedError",
            "EngineConfig",
            "LLMEngine",
            "LoRAError",
            "LoRAInfo",
            "ModelConfig",
            "ModelNotFoundError",
            "OpenAIError",
            "RequestError",
            "RequestOutput",
            "SamplingParams",
            "TokenLogprob",
            "Tokenizer",
            "resolve_model",
        ]
    )
    for name in local_engine.__all__:
        assert getattr(local_engine, name) is not None


def test_local_engine_imports_no_gateway_code() -> None:
    root = Path(local_engine.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in {"gateway", "backends", "policies"}, f"{path} imports {n}"
