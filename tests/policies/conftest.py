"""Gateways with limits, budgets and queues, on the memory store or a real redis-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import openai
import pytest

from gateway.auth import hash_key, new_key
from gateway.keys import GATEWAY
from policies.clock import SYSTEM, Clock
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY
from tests.harness import ServerThread

ADMIN_KEY = new_key()
SECOND_KEY = new_key()  # a second key of tenant acme


def key_id(key: str) -> str:
    return hash_key(key)[7:19]


def policy_config(
    upstream_url: str,
    *,
    acme: str = "",
    globex: str = "",
    policies: str = "",
    stores: str = "",
    price: str = "{input: 1.0, output: 2.0}",
    deployment: str = "",
) -> str:
    """Tenant ``acme`` (keys KEY and SECOND_KEY) and ``globex`` (OTHER_KEY); extra YAML for each, indented
    by 4 spaces. Aliases ``chat`` and ``slow`` price at $1 / $2 per million input / output tokens unless
    ``price`` says otherwise."""
    return f"""
server:
  log_requests: true
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
stores:
  sweep_interval_s: 0.2
{stores}
policies:
  max_wait_s: 0
{policies}
models:
  - name: chat
    deployments:
      - provider: openai-compatible
        model: fake-model
        name: fake-chat
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}
        price: {price}
{deployment}
  - name: slow
    deployments:
      - provider: openai-compatible
        model: slow-stream
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}
        price: {price}
  - name: broken
    deployments:
      - provider: openai-compatible
        model: error-500
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}
tenants:
  - name: acme
    keys: {json.dumps([hash_key(KEY), hash_key(SECOND_KEY)])}
{acme}
  - name: globex
    keys: ["{hash_key(OTHER_KEY)}"]
{globex}
"""


@pytest.fixture
def policy_gateway(upstream, start_gateway, stores_yaml) -> Callable[..., ServerThread]:
    """A gateway on each store (``store_kind``: memory, one Redis, a Redis Cluster); the same tests run on all."""

    def start(clock: Clock = SYSTEM, **sections: str) -> ServerThread:
        stores = sections.pop("stores", "")
        return start_gateway(
            policy_config(upstream[0].url, stores=stores_yaml + "\n" + stores, **sections), clock=clock
        )

    return start


def sdk(server: ServerThread, key: str = KEY, timeout: float = 20) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=timeout)


def chat(client: openai.OpenAI, content: str = "hello there", **extra):
    return client.chat.completions.with_raw_response.create(
        model=extra.pop("model", "chat"), messages=[{"role": "user", "content": content}], **extra
    )


def usage(server: ServerThread, key: str = ADMIN_KEY, **params: str) -> httpx.Response:
    return httpx.get(
        server.url + "/admin/usage", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def settled(server: ServerThread) -> None:
    """Waits until the gateway has written every settlement (they run after the response)."""
    assert server.app is not None
    admission = server.app[GATEWAY].pipeline.admission
    asyncio.run_coroutine_threadsafe(admission.settled(), server.loop).result(10)


__all__ = [
    "ADMIN_KEY",
    "KEY",
    "OTHER_KEY",
    "SECOND_KEY",
    "chat",
    "key_id",
    "policy_config",
    "sdk",
    "settled",
    "usage",
]
