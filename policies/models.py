"""The model catalog: price per million tokens (input, cache read, cache write, output), context window and output limit of well-known models.

Shipped as ``policies/data/models*.yaml`` (grouped by provider; later files override earlier ones) and
looked up by the upstream model name; a deployment's own settings in config.yaml take precedence.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

_DATA = Path(__file__).resolve().parent / "data"
_BEDROCK_REGION_PREFIXES = frozenset({"us", "eu", "apac", "us-gov", "ca", "jp", "au", "global"})


@dataclass(frozen=True, slots=True)
class ModelInfo:
    provider: str
    input: float  # USD per million prompt tokens
    output: float  # USD per million completion tokens
    cached_input: float | None = None  # USD per million cache-read prompt tokens (None: the input price)
    cache_write_input: float | None = (
        None  # USD per million cache-write prompt tokens (None: the input price)
    )
    context_window: int | None = None
    max_output_tokens: int | None = None


@cache
def catalog() -> dict[str, ModelInfo]:
    models: dict[str, ModelInfo] = {}
    for path in sorted(_DATA.glob("models*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for provider, entries in data.items():
            for name, fields in (entries or {}).items():
                models[str(name)] = ModelInfo(provider=str(provider), **fields)
    return models


def model_info(model: str) -> ModelInfo | None:
    """The catalog entry for an upstream model name (exact, then without a date suffix or org prefix)."""
    models = catalog()
    if model in models:
        return models[model]
    region, dot, rest = model.partition(".")
    if dot and region in _BEDROCK_REGION_PREFIXES and rest in models:
        return models[rest]  # Bedrock's cross-region inference profiles: us.anthropic.claude-…
    base = model.rsplit("/", 1)[-1]
    while base and base not in models:
        cut = base.rfind("-")
        if cut <= 0:
            return None
        base = base[:cut]
    return models.get(base)
