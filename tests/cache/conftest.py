"""A gateway with the cache on, in front of the fake OpenAI upstream; tenants acme and globex, an admin key."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from gateway.auth import hash_key, new_key
from gateway.keys import GATEWAY
from policies.clock import SYSTEM, Clock
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread
from tests.wait import wait_for

ADMIN_KEY = new_key()
THIRD_KEY = new_key()  # tenant initech: semantic cache off by its own setting


def cache_config(
    upstream_url: str,
    cache: dict[str, Any],
    *,
    acme_cache: dict[str, Any] | None = None,
    alias_cache: dict[str, Any] | None = None,
    faq: bool = False,
) -> str:
    """Aliases chat and other (same upstream model, priced as gpt-4o-mini), cut (a stream that breaks) and, with
    ``faq``, faq (semantic mode faq: the gateway then loads its embedder, whatever ``cache`` says); tenants acme,
    globex and initech (semantic mode off)."""

    def deployment(model: str) -> str:
        return (
            f"      - provider: openai-compatible\n        model: {model}\n"
            f"        api_base: {upstream_url}/v1\n        api_key: {UPSTREAM_KEY}\n"
            f"        timeouts: {{connect_s: 2, read_s: 2}}\n"
        )

    alias_extra = f"    cache: {json.dumps(alias_cache)}\n" if alias_cache else ""
    acme_extra = f"    cache: {json.dumps(acme_cache)}\n" if acme_cache else ""
    faq_alias = (
        f"  - name: faq\n    deployments:\n{deployment('gpt-4o-mini')}    cache: {{semantic: {{mode: faq}}}}\n"
        if faq
        else ""
    )
    return (
        f"server:\n  log_requests: true\n"
        f'admin:\n  keys: ["{hash_key(ADMIN_KEY)}"]\n'
        f"cache: {json.dumps(cache)}\n"
        f"models:\n"
        f"  - name: chat\n    deployments:\n{deployment('gpt-4o-mini')}{alias_extra}"
        f"  - name: other\n    deployments:\n{deployment('gpt-4o-mini')}"
        f"  - name: cut\n    deployments:\n{deployment('cut-stream')}"
        f"  - name: embed\n    deployments:\n{deployment('fake-embed')}"
        f"{faq_alias}"
        f"tenants:\n"
        f'  - name: acme\n    keys: ["{hash_key(KEY)}"]\n{acme_extra}'
        f'  - name: globex\n    keys: ["{hash_key(OTHER_KEY)}"]\n'
        f'  - name: initech\n    keys: ["{hash_key(THIRD_KEY)}"]\n    cache: {{semantic: {{mode: "off"}}}}\n'
    )


def client_for(server: ServerThread, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def ask(
    client: openai.OpenAI,
    question: str,
    *,
    model: str = "chat",
    system: str | None = None,
    history: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[Any, dict[str, str]]:
    """One chat completion; returns the parsed answer and the response headers."""
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.extend(history or [])
    messages.append({"role": "user", "content": question})
    params.setdefault("temperature", 0)
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        extra_headers=headers,
        **params,
    )
    return raw.parse(), dict(raw.headers)


def settle(server: ServerThread) -> None:
    """Waits until the gateway's cache has stored every answer handed to it (storing is off the request path)."""
    import asyncio

    assert server.app is not None
    cache = server.app[GATEWAY].pipeline.cache
    asyncio.run_coroutine_threadsafe(cache.drain(), server.loop).result(timeout=30)


@pytest.fixture
def cached_gateway(
    upstream: tuple[ServerThread, FakeState], start_gateway: Callable[..., ServerThread], stores_yaml: str
) -> Callable[..., ServerThread]:
    """A gateway with the cache on, on each store (``store_kind``: memory, one Redis, a Redis Cluster)."""

    def start(cache: dict[str, Any], clock: Clock = SYSTEM, **overrides: Any) -> ServerThread:
        stores = f"stores:\n{stores_yaml}\n" if stores_yaml else ""
        return start_gateway(cache_config(upstream[0].url, cache, **overrides) + stores, clock=clock)

    return start


@pytest.fixture(scope="module")
def semantic_stack() -> Iterator[tuple[ServerThread, FakeState]]:
    """One gateway with the semantic cache for a whole module: the embedding model loads once."""
    from gateway.app import build_app
    from gateway.config import parse_config
    from tests.fakes.openai_upstream import build_app as build_fake

    state = FakeState(api_key=UPSTREAM_KEY)
    fake = ServerThread(lambda: build_fake(state)).start()
    # a generous timeout: on a busy CI machine a slow embedding must not turn an expected hit into a miss
    semantic = {"enabled": True, "timeout_s": 10, "mode": "general"}  # faq is the default: tested alone
    loaded = parse_config(
        cache_config(fake.url, {"enabled": True, "semantic": semantic}, faq=True),
        path="test-config.yaml",
        env={},
    )
    server = ServerThread(lambda: build_app(loaded)).start()
    # the gateway serves while its embedder loads (those requests miss): the tests here ask once it has loaded
    assert server.app is not None
    cache = server.app[GATEWAY].pipeline.cache
    wait_for(lambda: cache.embedder.loaded and cache.index_ready, timeout=120, what="the embedder loaded")
    yield server, state
    server.stop()
    fake.stop()
