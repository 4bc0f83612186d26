"""``python -m gateway top --once`` against a live gateway: its table shows each tenant's traffic per alias as
the gateway's /metrics counts it."""

from __future__ import annotations

import subprocess
import sys

import openai

from tests.conftest import KEY, OTHER_KEY
from tests.ops.gateway_process import ROOT, GatewayProcess
from tests.ops.test_controlplane import admin_config, chat


def test_top_once_shows_each_tenants_traffic_per_alias(upstream, tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(admin_config(upstream[0].url))
    gateway = GatewayProcess(config, tmp_path / "gateway.log").wait_ready()
    try:
        for _ in range(3):
            assert chat(gateway, KEY) == 200
        assert chat(gateway, KEY, "private") == 404
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as client:
            client.embeddings.create(model="embed", input="x")
        shown = subprocess.run(
            [sys.executable, "-m", "gateway", "top", "--url", gateway.url, "--once", "--interval", "0.2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        )
    finally:
        gateway.stop()
    assert shown.returncode == 0, shown.stderr
    rows = {
        tuple(cells[:2]): cells[2:]
        for line in shown.stdout.splitlines()
        if len(cells := [c.strip() for c in line.strip("│┃ ").split("│")]) == 10
    }
    # req/s, err/s, requests, errors, tokens, p50, p95, cache hits
    assert rows[("acme", "chat")][2:4] == ["3", "0"]
    assert int(rows[("acme", "chat")][4]) > 0 and rows[("acme", "chat")][5]
    assert rows[("acme", "-")][2:4] == ["1", "1"]  # a model the tenant may not use: no alias
    assert rows[("globex", "embed")][2:4] == ["1", "0"]
    assert rows[("acme", "chat")][0] == "0.0"  # nothing arrived during the interval
    failed = subprocess.run(
        [sys.executable, "-m", "gateway", "top", "--url", gateway.url, "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1 and "cannot read" in failed.stderr
