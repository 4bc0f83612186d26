"""config.yaml: substitution, validation errors naming the field, the CLI around it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.auth import hash_key
from gateway.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
HASH = hash_key("k")


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env or {})
    return caught.value.problems


def test_errors_name_the_exact_field():
    text = """
models:
  - name: a
    deployments: [{provider: openai, model: m, api_key: k}]
  - name: b
    deployments: [{provider: openai, model: m, api_key: k}]
  - name: c
    deployments:
      - {provider: openai, model: m, api_base: "not a url"}
      - {provider: azure, model: m}
      - {provider: openai, model: m, colour: red}
tenants:
  - {name: t, keys: ["plain-key"], models: [a]}
"""
    assert problems(text) == [
        "models[2].deployments[0].api_base: not a URL",
        "models[2].deployments[1]: api_base is required for provider 'azure'",
        "models[2].deployments[2].colour: unknown field",
        "tenants[0].keys[0]: must be 'sha256:' and 64 lowercase hex digits "
        "(make one with: python -m gateway keys new --tenant NAME)",
    ]


def test_cross_references_are_checked():
    text = f"""
models:
  - {{name: a, deployments: [{{provider: openai, model: m}}]}}
  - {{name: a, deployments: [{{provider: openai, model: m}}]}}
tenants:
  - {{name: t, keys: ["{HASH}"], models: [a, zzz]}}
  - {{name: u, keys: ["{HASH}"]}}
"""
    assert problems(text) == [
        "models[1].name: alias 'a' is defined twice",
        "tenants[0].models[1]: no model alias named 'zzz'",
        "tenants[1].keys[0]: already a key of tenant 't'",
    ]


def test_env_substitution_defaults_and_disabled_deployments():
    text = """
server: {port: "${PORT:-9001}"}
models:
  - name: a
    deployments:
      - {provider: openai, model: m, api_key: "${KEY_A}"}
      - {provider: openai-compatible, model: m, api_base: "${BASE}", api_key: "${KEY_B}"}
"""
    loaded = parse_config(text, env={"KEY_A": "secret-a", "BASE": "http://127.0.0.1:1/v1"})
    assert loaded.config.server.port == 9001
    assert loaded.config.models[0].deployments[0].api_key == "secret-a"
    assert loaded.disabled == {("a", 1): "environment variable KEY_B is not set"}
    assert problems(text, env={"KEY_A": "x"}) == [
        "models[0].deployments[1].api_base: environment variable BASE is not set"
    ]


def test_the_shipped_config_loads_without_any_secret():
    loaded = load_config(ROOT / "config.yaml", env={})
    assert loaded.config.server.host == "127.0.0.1"
    assert all("OPENAI_API_KEY" in reason for reason in loaded.disabled.values())
    assert loaded.config.tenants


def run_cli(*args: str, without: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS``; ``without``: modules made unimportable first, as if not installed."""
    command = ["-m", "gateway"]
    if without:
        command = [
            "-c",
            f"import sys; sys.modules.update(dict.fromkeys({list(without)!r})); "
            "from gateway.cli import main; sys.exit(main())",
        ]
    return subprocess.run(
        [sys.executable, *command, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_check_config_cli(tmp_path):
    good = run_cli("check-config", str(ROOT / "config.yaml"))
    assert good.returncode == 0 and "OK" in good.stdout
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(
        "models:\n  - name: x\n    deployments: [{provider: openai, model: m, api_base: nope}]\n"
    )
    bad = run_cli("check-config", str(bad_file))
    assert bad.returncode == 1 and "models[0].deployments[0].api_base: not a URL" in bad.stderr
    missing = run_cli("check-config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_keys_new_prints_a_key_once_and_its_hash_line():
    result = run_cli("keys", "new", "--tenant", "acme")
    assert result.returncode == 0
    key = next(line.strip() for line in result.stdout.splitlines() if line.strip().startswith("gw-"))
    assert f'keys: ["{hash_key(key)}"]' in result.stdout
    assert result.stdout.count(key) == 1
