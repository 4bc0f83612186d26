"""Variant changes made through the admin API on one gateway process serve on the others within
``control_plane.poll_interval_s``, with no reload (docs/variants.md#version-control): two real gateway
processes on one redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key, new_key
from tests.conftest import KEY, UPSTREAM_KEY
from tests.ops.gateway_process import GatewayProcess, poll

ADMIN_KEY = new_key()


@pytest.fixture
def two_gateways(upstream, redis_server, tmp_path) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    url = upstream[0].url
    deps = [
        json.dumps(
            {
                "provider": "openai-compatible",
                "model": f"model-{n}",
                "name": n,
                "api_base": f"{url}/v1",
                "api_key": UPSTREAM_KEY,
            }
        )
        for n in ("a", "b")
    ]
    variants = {"v1": {"deployments": ["a"], "weight": 1}, "v2": {"deployments": ["b"], "weight": 0}}
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
stores: {{redis_url: {redis_server.url}}}
control_plane: {{poll_interval_s: 0.1}}
admin: {{keys: ["{hash_key(ADMIN_KEY)}"]}}
models:
  - name: chat
    deployments: [{", ".join(deps)}]
    variants: {json.dumps(variants)}
tenants:
  - {{name: acme, keys: ["{hash_key(KEY)}"]}}
""")
    a = GatewayProcess(config, tmp_path / "a.log")
    b = GatewayProcess(config, tmp_path / "b.log")
    try:
        yield a.wait_ready(), b.wait_ready()
    finally:
        a.stop()
        b.stop()


def _served(gateway: GatewayProcess, users: int = 20) -> set[str]:
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=20) as client:
        return {
            client.post(
                "/v1/chat/completions",
                json={"model": "chat", "user": f"u{i}", "messages": [{"role": "user", "content": "hi"}]},
            ).headers["x-gateway-variant"]
            for i in range(users)
        }


def _change(gateway: GatewayProcess, **body: Any) -> dict[str, Any]:
    response = httpx.post(
        gateway.url + "/admin/aliases/chat/variants",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_variant_change_on_one_process_serves_on_the_other(two_gateways):
    a, b = two_gateways
    assert _served(a) == _served(b) == {"v1"}
    _change(a, action="promote", variant="v2", why="v2 passed the eval")
    poll(lambda: _served(b, 4) == {"v2"}, "the promotion made on a serves on b", timeout_s=10)
    _change(b, action="rollback", why="v2 regressed")
    poll(lambda: _served(a, 4) == {"v1"}, "the rollback made on b serves on a", timeout_s=10)
    assert _served(a) == _served(b) == {"v1"}
