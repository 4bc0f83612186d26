from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gateway import logs
from gateway.app import build_app
from gateway.auth import hash_key, new_key
from gateway.config import LoadedConfig, parse_config
from policies.clock import SYSTEM, Clock
from tests.fakes.openai_upstream import FakeState
from tests.fakes.openai_upstream import build_app as build_fake
from tests.harness import ServerThread
from tests.redis_server import RedisServer

LOG_PATH = Path(tempfile.mkdtemp(prefix="gateway-test-logs-")) / "gateway.log"
_log_file = LOG_PATH.open("ab", buffering=0)
logs.configure(stream=_log_file)

KEY = new_key()
OTHER_KEY = new_key()
UPSTREAM_KEY = "upstream-secret-" + "x" * 24


@pytest.fixture
def upstream() -> Iterator[tuple[ServerThread, FakeState]]:
    state = FakeState(api_key=UPSTREAM_KEY)
    server = ServerThread(lambda: build_fake(state)).start()
    yield server, state
    server.stop()


def config_text(upstream_url: str, extra_models: str = "", server: str = "") -> str:
    """Tenant acme may use every alias but ``private``; tenant globex may use all."""
    acme = ["chat", "embed", *re.findall(r"- name: (\S+)", extra_models)]
    return f"""
server:
  log_requests: true
{server}
models:
  - name: chat
    deployments:
      - provider: openai-compatible
        model: fake-model
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}
  - name: embed
    deployments:
      - provider: openai-compatible
        model: fake-embed
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}
  - name: private
    deployments:
      - provider: openai-compatible
        model: fake-model
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}
{extra_models}
tenants:
  - name: acme
    keys: ["{hash_key(KEY)}"]
    models: {json.dumps(acme)}
  - name: globex
    keys: ["{hash_key(OTHER_KEY)}"]
    models: "*"
"""


def failure_models(upstream_url: str) -> str:
    """Aliases whose upstream model name picks a failure of the fake upstream."""
    lines = []
    for alias, model in (("slow", "slow-stream"), ("hanging", "hang")):
        lines.append(f"""  - name: {alias}
    deployments:
      - provider: openai-compatible
        model: {model}
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}
        timeouts: {{connect_s: 2, read_s: 1.5}}""")
    return "\n".join(lines)


@pytest.fixture
def start_gateway() -> Iterator[Callable[[str], ServerThread]]:
    servers: list[ServerThread] = []

    def start(text: str, env: dict[str, str] | None = None, clock: Clock = SYSTEM) -> ServerThread:
        loaded: LoadedConfig = parse_config(text, path="test-config.yaml", env=env or {})
        server = ServerThread(lambda: build_app(loaded, clock)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def gateway(upstream: tuple[ServerThread, FakeState], start_gateway: Callable[[str], ServerThread]) -> ServerThread:
    return start_gateway(config_text(upstream[0].url, failure_models(upstream[0].url)))


@pytest.fixture
def client(gateway: ServerThread):  # type: ignore[no-untyped-def]
    import openai

    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> RedisServer:
    """A real redis-server on loopback, emptied for each test."""
    redis_session.flush()
    return redis_session
