"""LoRA adapters behind the gateway (``provider: local``), through the openai SDK: ``model: ALIAS:ADAPTER``,
an alias mapped to an adapter, adapters added and removed by the admin API, in process and on managed workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import build_app
from gateway.auth import hash_key, new_key
from gateway.config import parse_config
from local_engine import Tokenizer
from local_engine.detokenizer import IncrementalDetokenizer
from tests.conftest import KEY
from tests.harness import ServerThread
from tests.local_engine.conftest import hf_model
from tests.local_engine.test_lora import PROMPT, _reference

ADMIN_KEY = new_key()
TOKENS = 6


def _gateway(models: str) -> ServerThread:
    text = f"""
models:
{models}
tenants:
  - name: acme
    keys: ["{hash_key(KEY)}"]
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
"""
    loaded = parse_config(text, path="test-config.yaml", env={})
    return ServerThread(lambda: build_app(loaded)).start()


def _poll(check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _ready(server: ServerThread) -> bool:
    return bool(httpx.get(server.url + "/readyz", timeout=10).json()["status"] == "ready")


def _admin(
    server: ServerThread, method: str, path: str, key: str = ADMIN_KEY, **kwargs: Any
) -> httpx.Response:
    return httpx.request(
        method, server.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kwargs
    )


def _complete(server: ServerThread, model: str) -> str:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as client:
        answer = client.completions.create(
            model=model, prompt=PROMPT, max_tokens=TOKENS, temperature=0, extra_body={"ignore_eos": True}
        )
    assert answer.usage is not None and answer.usage.completion_tokens == TOKENS
    return answer.choices[0].text


@pytest.fixture(scope="module")
def expected(tiny_llama: Path, adapters: dict[str, tuple[Path, Any]]) -> dict[str | None, str]:
    """What the base (None) and each adapter answer, by transformers (+ peft merged), as the server writes it."""
    tok = Tokenizer(tiny_llama)

    def text(model: Any) -> str:
        detok = IncrementalDetokenizer(tok, PROMPT)
        return "".join(detok.add(t) for t in _reference(model, PROMPT, TOKENS)[0])

    return {
        None: text(hf_model(tiny_llama)),
        **{name: text(merged) for name, (_, merged) in adapters.items()},
    }


@pytest.fixture(scope="module")
def gateway(tiny_llama: Path, adapters: dict[str, tuple[Path, Any]]) -> Iterator[ServerThread]:
    server = _gateway(f"""
  - name: tiny
    deployments:
      - provider: local
        name: tiny-engine
        model: llama
        model_path: {tiny_llama}
        engine: {{block_size: 4, num_kv_blocks: 256, loras: {{attn: {adapters["attn"][0]}}}}}
  - name: support
    deployments:
      - provider: local
        name: support-engine
        model: "llama:mlp"
        model_path: {tiny_llama}
        engine: {{block_size: 4, num_kv_blocks: 64, max_loras: 1, loras: {{mlp: {adapters["mlp"][0]}}}}}
""")
    _poll(lambda: _ready(server))
    yield server
    server.stop()


def test_alias_colon_adapter_and_an_alias_mapped_to_one(
    gateway: ServerThread, expected: dict[str | None, str]
) -> None:
    assert _complete(gateway, "tiny:attn") == expected["attn"]
    assert _complete(gateway, "tiny") == expected[None]
    assert _complete(gateway, "support") == expected["mlp"]
    with pytest.raises(openai.NotFoundError) as caught:
        _complete(gateway, "tiny:nope")
    assert caught.value.code == "model_not_found" and "'nope'" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        _complete(gateway, "elsewhere:attn")  # no such alias


def test_admin_adds_and_removes_an_adapter(
    gateway: ServerThread,
    adapters: dict[str, tuple[Path, Any]],
    expected: dict[str | None, str],
    tmp_path: Path,
) -> None:
    path = str(adapters["every"][0])
    added = _admin(gateway, "POST", "/admin/lora/tiny-engine", json={"lora_name": "every", "lora_path": path})
    assert added.status_code == 200 and added.json()["name"] == "every" and added.json()["rank"] == 8
    assert _complete(gateway, "tiny:every") == expected["every"]
    listed = _admin(gateway, "GET", "/admin/lora/tiny-engine").json()["data"]
    assert {a["name"]: a["resident"] for a in listed} == {"attn": True, "every": True}

    removed = _admin(gateway, "DELETE", "/admin/lora/tiny-engine", json={"lora_name": "every"})
    assert removed.status_code == 200 and removed.json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        _complete(gateway, "tiny:every")
    assert _admin(gateway, "DELETE", "/admin/lora/tiny-engine?lora_name=every").status_code == 404

    bad = _admin(
        gateway, "POST", "/admin/lora/tiny-engine", json={"lora_name": "x", "lora_path": str(tmp_path)}
    )
    assert bad.status_code == 400 and "no adapter_config.json" in bad.json()["error"]["message"]
    assert (
        _admin(gateway, "POST", "/admin/lora/nowhere", json={"lora_name": "x", "lora_path": path}).status_code
        == 404
    )
    assert _admin(gateway, "GET", "/admin/lora/tiny-engine", key=KEY).status_code == 403  # a tenant key


def test_adapters_on_managed_workers(
    tiny_llama: Path, adapters: dict[str, tuple[Path, Any]], expected: dict[str | None, str]
) -> None:
    server = _gateway(f"""
  - name: tiny
    deployments:
      - provider: local
        name: tiny-workers
        model: llama
        model_path: {tiny_llama}
        engine: {{kv_cache_gib: 0.01, load_timeout_s: 120, loras: {{attn: {adapters["attn"][0]}}},
                  workers: {{min: 1, max: 1}}}}
""")
    try:
        _poll(lambda: _ready(server) and _complete(server, "tiny") == expected[None])
        assert _complete(server, "tiny:attn") == expected["attn"]  # given to the worker when it started
        added = _admin(
            server,
            "POST",
            "/admin/lora/tiny-workers",
            json={"lora_name": "mlp", "lora_path": str(adapters["mlp"][0])},
        )
        assert added.status_code == 200
        assert _complete(server, "tiny:mlp") == expected["mlp"]  # sent to the running worker
        assert (
            _admin(server, "DELETE", "/admin/lora/tiny-workers", json={"lora_name": "mlp"}).status_code == 200
        )
        with pytest.raises(openai.NotFoundError):
            _complete(server, "tiny:mlp")
    finally:
        server.stop()
