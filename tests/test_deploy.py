"""The compose stack: the file is valid, and the gateway service it names runs (outside Docker) on its config."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import openai
import redis
import yaml

from gateway.auth import hash_key, new_key
from tests.conftest import UPSTREAM_KEY
from tests.gateway.test_server import start_serve_with
from tests.harness import reap
from tests.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_is_valid_and_needs_a_tenant_key():
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose (Debian package) is installed by .ci/run"
    env = {**os.environ, "GATEWAY_TENANT_KEY_HASH": "sha256:" + "0" * 64}
    subprocess.run([compose, "config", "-q"], cwd=ROOT, env=env, check=True, timeout=60)
    env.pop("GATEWAY_TENANT_KEY_HASH")
    refused = subprocess.run(
        [compose, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "keys new" in refused.stderr


def test_the_compose_gateway_service_serves_its_config(tmp_path, upstream, redis_server):
    """The gateway service on its compose config, outside Docker: Redis is a real redis-server (the compose
    stack's `redis` service), Qdrant is qdrant-client's local mode standing in for the `qdrant` service."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"gateway", "redis", "qdrant"} <= set(compose["services"])
    service = compose["services"]["gateway"]
    mounted = service["volumes"][0].split(":")[0]
    assert (ROOT / mounted).exists()
    key = new_key()
    env = {
        "GATEWAY_TENANT_KEY_HASH": hash_key(key),
        "GATEWAY_WORKERS": "1",
        "OPENAI_API_KEY": "",
        "REDIS_URL": redis_server.url,
        "QDRANT_URL": ":memory:",
    }
    process, url = start_serve_with(ROOT / mounted, env)
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
            assert client.models.list().data == []  # the OpenAI deployment is disabled without its key
    finally:
        process.terminate()
        # it drains for up to drain_timeout_s (30 s) and exits once the semantic cache's embedder has finished
        # loading (a thread importing torch cannot be stopped: ~5 s quiet, several times that beside a CPU hog)
        assert reap(process, 120) == 0

    env.update(OPENAI_API_KEY=UPSTREAM_KEY, OPENAI_API_BASE=upstream[0].url + "/v1")
    process, url = start_serve_with(ROOT / mounted, env)
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60) as client:
            ask: dict[str, Any] = {
                "model": "gpt-4o-mini",
                "temperature": 0,
                "messages": [{"role": "user", "content": "hi there"}],
            }
            first = client.chat.completions.with_raw_response.create(**ask)
            # the answer is stored off the request path: ask again once it is in the compose stack's Redis
            stored = redis.Redis.from_url(redis_server.url)
            wait_for(lambda: list(stored.scan_iter("gw:cache:{c:*}:gpt-4o-mini:*")), what="the answer stored")
            again = client.chat.completions.with_raw_response.create(**ask)
        assert first.parse().choices[0].message.content == "Echo: hi there"
        assert first.headers["x-cache"] == "miss" and again.headers["x-cache"] == "hit-exact"
        assert again.parse().choices[0].message.content == "Echo: hi there"
        assert len(upstream[1].requests) == 1
        # limits, the ledger and the exact cache went to the compose stack's Redis
        keys = cast(list[bytes], stored.keys("*"))
        stored.close()
        assert any(b"gw:" in k for k in keys), keys
    finally:
        process.terminate()
        assert reap(process, 120) == 0


def test_the_compose_stack_monitors_the_gateway():
    """Prometheus scrapes the gateway service by its DNS name (every replica) with the shipped alert rules;
    Grafana gets the datasource and dashboards from the repository's files."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prometheus", "grafana"} <= set(services)
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    [dns] = job["dns_sd_configs"]
    # the compose config's private metrics listener (anonymous /metrics is refused on the published port)
    metrics_listen = yaml.safe_load((ROOT / "deploy/config.compose.yaml").read_text())["server"][
        "metrics_listen"
    ]
    assert dns["names"] == ["gateway"] and str(dns["port"]) == metrics_listen.rsplit(":", 1)[1]
    assert metrics_listen.rsplit(":", 1)[1] not in [p.split(":")[0] for p in services["gateway"]["ports"]]
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {f"/etc/prometheus/{f}" for f in prometheus["rule_files"]} <= mounted
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
