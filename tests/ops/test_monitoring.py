"""The compose stack's monitoring: Prometheus's config and alert rules are valid and their unit tests pass
(promtool), and every query of the Grafana dashboards and alerts parses and names only metrics that a real
gateway process (with a local engine deployment and a budget) exports at /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest
import yaml

from gateway.auth import hash_key
from tests.conftest import KEY, UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeState
from tests.fakes.openai_upstream import build_app as build_fake
from tests.harness import ServerThread
from tests.ops.gateway_process import ROOT, GatewayProcess

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
# what Grafana substitutes before sending a query
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$__interval": "15s",
    "$tenant": ".*",
    "$alias": ".*",
}
_METRIC = re.compile(r"\b(gateway_[a-z0-9_]+)\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool (Debian package prometheus) is installed by .ci/run"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def test_prometheus_config_and_its_rule_files_are_valid():
    checked = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "alerts.yml" in checked.stdout + checked.stderr


def test_alert_rules_pass_their_unit_tests():
    tested = promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # every alert has at least one test that expects it to fire
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    fired = {
        case["alertname"]
        for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert alerts == fired


def dashboard_queries() -> dict[str, str]:
    """title/refId -> PromQL, Grafana's variables substituted, from every panel and template variable."""
    queries: dict[str, str] = {}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert panels, path
        for panel in panels:
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, (panel["title"], expr)
                queries[f"{path.stem} / {panel['title']} / {target['refId']}"] = expr
        for variable in dashboard["templating"]["list"]:
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"]["query"])
            assert match, variable
            queries[f"{path.stem} / ${variable['name']}"] = f"count by ({match[2]}) ({match[1]})"
    return queries


def alert_queries() -> dict[str, str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {f"alert {rule['alert']}": rule["expr"] for group in groups for rule in group["rules"]}


def test_every_dashboard_query_parses(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 40
    # promtool parses a rule file's expressions with Prometheus's own PromQL parser
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(queries.values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout

    broken = tmp_path / "broken.rules.yml"  # and it would say so: the check can fail
    broken.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "x",
                        "rules": [
                            {"record": "x:y", "expr": "sum by (tenant (rate(gateway_requests_total[1m]))"}
                        ],
                    }
                ]
            }
        )
    )
    assert promtool("check", "rules", str(broken)).returncode != 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Iterator[set[str]]:
    """Metric names at /metrics of a real gateway process: an OpenAI-compatible deployment, a local engine
    deployment (SmolLM2) and a tenant with a budget, after a few requests."""
    upstream = ServerThread(lambda: build_fake(FakeState(api_key=UPSTREAM_KEY))).start()
    tmp = tmp_path_factory.mktemp("monitoring")
    config = tmp / "config.yaml"
    config.write_text(f"""
models:
  - name: chat
    deployments:
      - provider: openai-compatible
        model: fake-model
        api_base: {upstream.url}/v1
        api_key: {UPSTREAM_KEY}
  - name: smollm2
    deployments:
      - provider: local
        model: SmolLM2-135M-Instruct
        engine: {{max_num_seqs: 2, kv_cache_gib: 0.05, max_model_len: 256}}
tenants:
  - name: acme
    keys: ["{hash_key(KEY)}"]
    budget: {{daily_usd: 5, monthly_usd: 100}}
""")
    gateway = GatewayProcess(config, tmp / "gateway.log").wait_ready()
    try:
        headers = {"Authorization": f"Bearer {KEY}"}
        for model in ("chat", "smollm2"):
            answer = httpx.post(
                gateway.url + "/v1/chat/completions",
                headers=headers,
                timeout=120,
                json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.status_code == 200, answer.text
        text = httpx.get(gateway.url + "/metrics", timeout=10).text
    finally:
        gateway.stop()
        upstream.stop()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
    assert 'gateway_budget_limit_usd{period="daily",tenant="acme"} 5.0' in text
    yield names


def test_dashboards_and_alerts_name_only_exported_metrics(exported):
    queries = {**dashboard_queries(), **alert_queries()}
    used = {name for expr in queries.values() for name in _METRIC.findall(expr)}
    assert len(used) >= 30
    missing = {
        name: [where for where, expr in queries.items() if name in _METRIC.findall(expr)]
        for name in used - exported
    }
    assert not missing, missing
    # the dashboards cover each area the operators asked for
    for area in (
        "gateway_requests_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_cost_usd_total",
        "gateway_budget_limit_usd",
        "gateway_cache_saved_usd_total",
        "gateway_breaker_state",
        "gateway_retries_total",
        "gateway_queue_depth",
        "gateway_queue_wait_seconds_bucket",
        "gateway_local_engine_running_sequences",
        "gateway_local_engine_kv_blocks_used",
        "gateway_local_engine_prefix_cache_hit_tokens_total",
        "gateway_local_engine_tokens_per_second",
        "gateway_upstream_attempts_total",
        "gateway_store_degraded",
    ):
        assert area in used, area
