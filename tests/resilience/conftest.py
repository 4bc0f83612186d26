from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key, new_key
from tests.conftest import KEY
from tests.fakes.chaos_upstream import ChaosState
from tests.fakes.chaos_upstream import build_app as build_chaos
from tests.harness import ServerThread

ADMIN_KEY = new_key()


@pytest.fixture
def chaos() -> Iterator[tuple[ServerThread, ChaosState]]:
    state = ChaosState()
    server = ServerThread(lambda: build_chaos(state)).start()
    yield server, state
    server.stop()


def dep(url: str, model: str, name: str | None = None, **extra: Any) -> str:
    """One deployment on the chaos upstream, as a YAML flow mapping."""
    fields = {
        "provider": "openai-compatible",
        "model": model,
        "api_base": f"{url}/v1",
        "api_key": "k",
        **({"name": name} if name else {}),
        **extra,
    }
    return json.dumps(fields)


def alias(name: str, *deployments: str, **extra: Any) -> str:
    lines = [f"  - name: {name}", "    deployments:"]
    lines += [f"      - {d}" for d in deployments]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines)


def config(*aliases: str, resilience: dict[str, Any] | None = None) -> str:
    return (
        "\n".join(
            [
                "server: {log_requests: true}",
                f'admin: {{keys: ["{hash_key(ADMIN_KEY)}"]}}',
                f"resilience: {json.dumps(resilience or {})}",
                "models:",
                *aliases,
                "tenants:",
                f'  - {{name: acme, keys: ["{hash_key(KEY)}"]}}',
            ]
        )
        + "\n"
    )


def chat(
    gateway: ServerThread,
    model: str,
    content: str = "hello",
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    timeout: float = 20,
    client: httpx.Client | None = None,
    **body: Any,
) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    if stream:
        payload["stream"] = True
    post = client.post if client is not None else httpx.post
    return post(
        gateway.url + "/v1/chat/completions",
        json=payload,
        timeout=timeout,
        headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
    )


def admin_deployments(gateway: ServerThread) -> dict[str, dict[str, Any]]:
    response = httpx.get(gateway.url + "/admin/deployments", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    return {f"{d['alias']}/{d['deployment']}": d for d in response.json()["data"]}
