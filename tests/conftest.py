from __future__ import annotations

import gc
import json
import os
import re
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

# Files the gateway keeps by default (request log, audit log) go to this test session's own folder, never the
# user's ~/.local/state; set before the gateway is imported, and inherited by the gateway processes tests start.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="gateway-tests-state-")
# One torch (OpenMP) thread per process, here and in every process a test starts, unless a test asks for more:
# three xdist workers share 2 cores, and torch's default of a thread per core leaves OpenMP threads spinning on
# cores the other workers need (tests/local_engine alone: 171 s and 332 CPU-s with the default, 62 s and 112
# CPU-s with one thread). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Bytecode is written, here and in every process a test starts (the xdist workers too, started after this file
# is read): with PYTHONDONTWRITEBYTECODE in the environment (this machine sets it) each gateway and engine process
# a test starts compiles the project's sources again (0.25 s a process) and each xdist worker rewrites every test
# module's asserts again; two process-heavy test files took 58 CPU-s with it and 52 without.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import httpx._transports.default
import httpx2._transports.default
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gateway import logs
from gateway.app import build_app
from gateway.auth import hash_key, new_key
from gateway.config import LoadedConfig, parse_config
from policies.clock import SYSTEM, Clock
from policies.config import StoresConfig
from policies.stores.layer import StoreLayer
from tests.fakes.openai_upstream import FakeState
from tests.fakes.openai_upstream import build_app as build_fake
from tests.harness import ServerThread
from tests.redis_server import RedisCluster, RedisServer

sys.dont_write_bytecode = False  # and in this process, for the test modules imported from here on (see above)


# One CA store for the HTTP clients this process makes (each httpx.get and each openai.OpenAI is a client; the openai
# SDK runs on httpx2, a fork): httpx reads the CA bundle into a new SSLContext for every client, 30 ms of CPU, and
# the tests make thousands of them (tests/scale/test_workers.py spent 11 of its 29 CPU-s in this process there).
# Only the default is shared (verify=True, no client certificate, keyed by the environment's CA settings); a client
# given its own context (tests/security) keeps it. httpcore sets ALPN on the context per connection: http/1.1 for
# every client, as no test uses h2.
def _share_ssl_context(transports: Any) -> None:
    new_context = transports.create_ssl_context
    contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}

    def shared(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is not True or cert or not trust_env:
            return new_context(verify=verify, cert=cert, trust_env=trust_env)
        key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if key not in contexts:
            contexts[key] = new_context(verify=verify, cert=cert, trust_env=trust_env)
        return contexts[key]

    transports.create_ssl_context = shared


_share_ssl_context(httpx._transports.default)
_share_ssl_context(httpx2._transports.default)

LOG_PATH = Path(tempfile.mkdtemp(prefix="gateway-test-logs-")) / "gateway.log"
_log_file = LOG_PATH.open("ab", buffering=0)
logs.configure(stream=_log_file)


def pytest_unconfigure(config: pytest.Config) -> None:
    _log_file.close()  # else left to the interpreter's exit, with a ResourceWarning


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Every test leaves transformers' load-time stand-ins put back: a model load racing another on a second thread
    can leave PreTrainedModel.tie_weights a no-op for the rest of the process, and every model the later tests load
    is then wrong (untied embeddings, meta tensors). Fail at the test that let it happen, not twenty files later."""
    from policies.cache.embedder import LOAD_LOCK

    # a stopped gateway's embedder may still be loading on its thread: wait for the load (and the import of
    # transformers it makes) to end, then look; a module still being imported has no PreTrainedModel yet
    with LOAD_LOCK:
        modeling = sys.modules.get("transformers.modeling_utils")
        pretrained = getattr(modeling, "PreTrainedModel", None)
    if pretrained is not None:
        tie_weights = pretrained.tie_weights
        assert tie_weights.__name__ == "tie_weights", (
            f"{item.nodeid} left transformers' PreTrainedModel.tie_weights patched ({tie_weights.__qualname__}): "
            "two model loads ran at once on two threads (load under policies.cache.embedder.LOAD_LOCK)"
        )


@pytest.fixture(autouse=bool(os.environ.get("TEST_GC_EACH")))
def _collect_after_each_test() -> Iterator[None]:
    """With TEST_GC_EACH=1, a full collection after each test: a socket or file it left to the GC fails that
    test (or the next one), not one picked by where the collector happens to run (finding leaks; slower)."""
    yield
    gc.collect()


# The files that take longest, in that order, before the others: `make test` hands whole files to its pytest-xdist
# workers in collection order (--no-loadscope-reorder: xdist would hand out the files with most tests first), and
# one of these handed out last would run on alone after the rest had finished. Measured per file (its tests' setup,
# call and teardown) in a `make test` run on a loaded machine, 40 s and more there, slowest first;
# tests/cache/test_embedder.py and tests/resilience/test_shared_breaker.py placed by their CPU since (about 1/3
# and 1/2 less). tests/local_engine's test_equivalence, test_structured_outputs and test_speculative* took 4-28 s.
_SLOW_FIRST = (
    "tests/finetune/test_fact.py",
    "tests/scale/test_workers.py",
    "tests/finetune/test_jobs.py",
    "tests/backends/test_local.py",
    "tests/finetune/test_restart.py",
    "tests/finetune/test_served.py",
    "tests/batches/test_local_engine.py",
    "tests/resilience/test_chaos_load.py",
    "tests/gateway/test_server.py",
    "tests/gateway/test_reload.py",
    "tests/policies/test_processes.py",
    "tests/gateway/test_extras.py",
    "tests/backends/test_providers.py",
    "tests/ops/test_monitoring.py",
    "tests/policies/test_queue.py",
    "tests/cache/test_embedder.py",
    "tests/cache/test_exact.py",
    "tests/test_deploy.py",
    "tests/gateway/test_messages.py",
    "tests/resilience/test_shared_breaker.py",
    "tests/cache/test_verifier.py",
    "tests/local_engine/test_kernels.py",
    "tests/local_engine/test_disagg.py",
    "tests/batches/test_durable.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(_SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: else as found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A socket left to the GC fails whichever test the collection falls in: name the test that opened it."""
    report = yield
    if report.failed and "unclosed <socket" in str(report.longrepr):
        from tests.harness import PORT_OWNERS

        peers = {int(port) for port in re.findall(r"raddr=\('127\.0\.0\.1', (\d+)\)", str(report.longrepr))}
        owners = [f"port {port}: {PORT_OWNERS.get(port, 'not a test server port')}" for port in sorted(peers)]
        report.sections.append(("unclosed socket's peer", "\n".join(owners)))
    return report


KEY = new_key()
OTHER_KEY = new_key()
UPSTREAM_KEY = "upstream-secret-" + "x" * 24


def log_line(request_id: str) -> dict[str, Any]:
    """The gateway's request log line for ``request_id`` (written just after the answer's last byte)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in LOG_PATH.read_text().splitlines() if request_id in line]
        lines = [line for line in lines if line.get("event") == "request"]
        if lines:
            return lines[-1]
        assert time.monotonic() < deadline, f"no log line for {request_id}"
        time.sleep(0.02)


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
def gateway(
    upstream: tuple[ServerThread, FakeState], start_gateway: Callable[[str], ServerThread]
) -> ServerThread:
    return start_gateway(config_text(upstream[0].url, failure_models(upstream[0].url)))


@pytest.fixture
def client(gateway: ServerThread):
    import openai

    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.remove()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> RedisServer:
    """A real redis-server on loopback, emptied for each test."""
    redis_session.flush()
    return redis_session


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop (Redis going away) and start again."""
    server = RedisServer()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    yield cluster
    cluster.remove()


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisCluster) -> RedisCluster:
    """A 3-master Redis Cluster of real redis-server processes, emptied for each test."""
    redis_cluster_session.flush()
    return redis_cluster_session


STORE_KINDS = ("memory", "redis", "cluster")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each store the policies run on: this process's memory, one Redis, a Redis Cluster."""
    return str(request.param)


@pytest.fixture
def stores_config(store_kind: str, request: pytest.FixtureRequest) -> StoresConfig:
    if store_kind == "memory":
        return StoresConfig()
    if store_kind == "redis":
        return StoresConfig(redis_url=request.getfixturevalue("redis_server").url)
    return StoresConfig(redis_url=request.getfixturevalue("redis_cluster").url, redis_cluster=True)


@pytest.fixture
def stores_yaml(stores_config: StoresConfig) -> str:
    """The lines under ``stores:`` (indented by 2) that put a gateway on ``store_kind``."""
    lines = [f"  redis_url: {stores_config.redis_url}"] if stores_config.redis_url else []
    if stores_config.redis_cluster:
        lines.append("  redis_cluster: true")
    return "\n".join(lines)


@pytest.fixture
async def store_layer(stores_config: StoresConfig) -> AsyncIterator[StoreLayer]:
    """An open store layer on ``store_kind``, closed after the test."""
    async with StoreLayer(stores_config) as layer:
        yield layer
