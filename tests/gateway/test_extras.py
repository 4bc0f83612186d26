"""A config that asks for what this install cannot do (an optional extra not installed) is refused by
``check-config`` and by ``serve``, naming the extra; the packages' absence is simulated in the subprocess."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.test_config import run_cli
from tests.harness import free_port

UPSTREAM = '{provider: openai-compatible, model: m, api_base: "http://127.0.0.1:9/v1", api_key: k}'


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_a_semantic_cache_without_its_index_is_refused_at_check_and_at_start(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        f"""
models:
  - name: chat
    deployments: [{UPSTREAM}]
cache:
  enabled: true
  semantic: {{enabled: true}}
""",
    )
    assert run_cli("check-config", config).returncode == 0  # installed here
    check = run_cli("check-config", config, without=("qdrant_edge",))
    serve = run_cli(
        "serve",
        "--config",
        config,
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        without=("qdrant_edge",),
    )
    for result in (check, serve):
        assert result.returncode == 1, result.stdout + result.stderr
        assert "cache.semantic: the semantic cache (index: edge) needs qdrant-edge-py" in result.stderr
        assert "pip install 'llm-gateway[cache]'" in result.stderr


def test_a_semantic_cache_one_tenant_asks_for_names_each_missing_package(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        f"""
models:
  - name: chat
    deployments: [{UPSTREAM}]
tenants:
  - name: acme
    cache: {{enabled: true, semantic: true}}
cache:
  semantic: {{index: qdrant, url: "http://127.0.0.1:6333"}}
""",
    )
    check = run_cli("check-config", config, without=("qdrant_client", "sentence_transformers"))
    assert check.returncode == 1
    assert "needs sentence-transformers, qdrant-client, not installed here" in check.stderr


def test_a_local_deployment_without_the_engine_is_refused_unless_disabled(tmp_path: Path) -> None:
    local = "{provider: local, model: smollm2}"
    config = _config(
        tmp_path,
        f"""
models:
  - name: chat
    deployments: [{UPSTREAM}]
  - name: tiny
    deployments: [{local}]
""",
    )
    check = run_cli("check-config", config, without=("torch",))
    assert check.returncode == 1
    assert (
        "models[1].deployments[0].provider: provider local runs the bundled engine, which needs torch"
        in check.stderr
        and "'llm-gateway[engine]'" in check.stderr
    )
    disabled = _config(
        tmp_path, Path(config).read_text().replace("model: smollm2}", "model: smollm2, enabled: false}")
    )
    assert run_cli("check-config", disabled, without=("torch",)).returncode == 0
