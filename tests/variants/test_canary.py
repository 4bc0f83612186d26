"""Canary with automatic rollback (docs/variants.md#canary): a candidate variant that fails more (or answers
slower) than its stable variant over the window is set to weight 0 by the gateway, recorded in the history
with the reason and figures, and counted in /metrics; one that fails like the stable stays."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from gateway.auth import hash_key, new_key
from policies.clock import ManualClock
from tests.conftest import KEY, LOG_PATH, UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeState
from tests.fakes.openai_upstream import build_app as build_fake
from tests.harness import ServerThread
from tests.ops.gateway_process import poll

ADMIN_KEY = new_key()
FAILING = frozenset({2, 5, 8})  # of every 10 requests a fake answers: 30% fail with a 500


def _fake(fail: bool = False, delay_s: float = 0.0) -> Iterator[tuple[ServerThread, FakeState]]:
    """A fake OpenAI upstream failing 3 requests of every 10 (a 500 in OpenAI's error format) and/or
    answering ``delay_s`` late."""
    counter = itertools.count()
    state = FakeState(api_key=UPSTREAM_KEY)

    @web.middleware
    async def faults(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if delay_s:
            await asyncio.sleep(delay_s)  # the upstream's own slowness, not a wait in the test
        if fail and next(counter) % 10 in FAILING:
            return web.json_response(
                {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}},
                status=500,
            )
        return await handler(request)

    def make() -> web.Application:
        app = build_fake(state)
        app.middlewares.append(faults)
        return app

    server = ServerThread(make).start()
    yield server, state
    server.stop()


@pytest.fixture
def stable() -> Iterator[tuple[ServerThread, FakeState]]:
    yield from _fake()


@pytest.fixture
def failing() -> Iterator[tuple[ServerThread, FakeState]]:
    yield from _fake(fail=True)


@pytest.fixture
def failing_too() -> Iterator[tuple[ServerThread, FakeState]]:
    yield from _fake(fail=True)


@pytest.fixture
def slow() -> Iterator[tuple[ServerThread, FakeState]]:
    yield from _fake(
        delay_s=0.3
    )  # twice the stable's p95 needs the stable under 150 ms even on a loaded machine


def _config(stable_url: str, candidate_url: str, **canary: Any) -> str:
    """``canary``: the candidate's canary settings (error-rate tests set a latency margin no loopback noise
    reaches, so that only the error rate is judged)."""
    deps = [
        json.dumps(
            {
                "provider": "openai-compatible",
                "model": f"model-{n}",
                "name": n,
                "api_base": f"{u}/v1",
                "api_key": UPSTREAM_KEY,
            }
        )
        for n, u in (("a", stable_url), ("b", candidate_url))
    ]
    variants = {
        "v1": {"deployments": ["a"], "weight": 1},
        "v2": {
            "deployments": ["b"],
            "weight": 1,
            "canary": {"stable": "v1", "min_requests": 20, "window_s": 600, **canary},
        },
    }
    return f"""
admin: {{keys: ["{hash_key(ADMIN_KEY)}"]}}
models:
  - name: chat
    deployments: [{", ".join(deps)}]
    retry: {{attempts: 1}}
    variants: {json.dumps(variants)}
tenants:
  - {{name: acme, keys: ["{hash_key(KEY)}"]}}
"""


def _admin(gateway: ServerThread, path: str) -> Any:
    response = httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


def _rolled_back(gateway: ServerThread) -> list[dict[str, Any]]:
    return [
        e for e in _admin(gateway, "/admin/aliases/chat/history")["data"] if e["action"] == "canary_rollback"
    ]


def _traffic(gateway: ServerThread, users: range, until: Callable[[], Any] | None = None) -> dict[str, int]:
    """One request per user; the variants that answered, and how often each failed (500s)."""
    served: dict[str, int] = {}
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        for i in users:
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}], user=f"user-{i}"
                )
                served[raw.headers["x-gateway-variant"]] = served.get(raw.headers["x-gateway-variant"], 0) + 1
            except openai.InternalServerError:
                served["failed"] = served.get("failed", 0) + 1
            if until is not None and until():
                break
    return served


def _metric(gateway: ServerThread, reason: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    for line in text.splitlines():
        if (
            line.startswith("gateway_variant_canary_rollbacks_total{")
            and 'alias="chat"' in line
            and f'reason="{reason}"' in line
            and 'variant="v2"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_candidate_failing_30_percent_is_rolled_back(stable, failing, start_gateway):
    gateway = start_gateway(
        _config(stable[0].url, failing[0].url, latency_margin=100), clock=ManualClock(1_800_000_000.0)
    )
    before = _metric(gateway, "error_rate")
    served = _traffic(gateway, range(400), until=lambda: _rolled_back(gateway))
    assert served.get("failed"), served  # the candidate's failures reached clients, as they do

    entry = poll(lambda: _rolled_back(gateway), "no canary rollback recorded")[0]
    assert (
        entry["who"] == "canary"
        and entry["before"]["v2"]["weight"] == 1
        and entry["after"]["v2"]["weight"] == 0
    )
    figures = entry["figures"]
    assert figures["reason"] == "error_rate"
    assert figures["candidate"]["outcomes"] >= 20 and figures["stable"]["outcomes"] >= 20
    assert figures["stable"]["error_rate"] == 0 and figures["candidate"]["error_rate"] > 0.05  # the margin
    assert entry["why"].startswith("canary error_rate: error rate ")
    assert _metric(gateway, "error_rate") == before + 1
    assert _admin(gateway, "/admin/aliases/chat/variants")["variants"]["v2"]["weight"] == 0

    # From now on the stable variant serves everyone, and nothing fails.
    assert _traffic(gateway, range(1000, 1040)) == {"v1": 40}


def test_a_candidate_failing_like_the_stable_stays(failing, failing_too, start_gateway):
    gateway = start_gateway(
        _config(failing[0].url, failing_too[0].url, latency_margin=100), clock=ManualClock(1_800_000_000.0)
    )
    served = _traffic(gateway, range(160))
    assert served.get("failed"), served
    windows = _admin(gateway, "/admin/aliases/chat/variants/stats")["canary"]
    assert windows["v1"]["outcomes"] >= 40 and windows["v2"]["outcomes"] >= 40, windows  # judged, many times
    assert windows["v1"]["errors"] and windows["v2"]["errors"]
    assert _rolled_back(gateway) == []
    assert _admin(gateway, "/admin/aliases/chat/variants")["variants"]["v2"]["weight"] == 1
    assert set(_traffic(gateway, range(1000, 1040))) >= {"v1", "v2"}


def test_a_slower_candidate_is_rolled_back_on_p95_latency(stable, slow, start_gateway):
    gateway = start_gateway(_config(stable[0].url, slow[0].url, latency_margin=1.0))
    served = _traffic(gateway, range(200), until=lambda: _rolled_back(gateway))
    assert "failed" not in served
    entry = poll(lambda: _rolled_back(gateway), "no canary rollback recorded")[0]
    figures = entry["figures"]
    assert figures["reason"] == "latency"
    assert (
        figures["candidate"]["p95_s"] >= 0.3
        and figures["candidate"]["p95_s"] > 2 * figures["stable"]["p95_s"]
    )
    line = log_line_of("canary rolled back")
    assert line["variant"] == "v2" and line["reason"] == "latency"


def log_line_of(event: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        lines = [json.loads(line) for line in LOG_PATH.read_text().splitlines() if event in line]
        return lines[-1] if lines else None

    return poll(find, f"no log line {event!r}")


def test_judge_waits_for_enough_outcomes_and_ignores_jitter():
    from policies.canary import judge
    from policies.variants import CanaryConfig

    config = CanaryConfig(stable="v1", min_requests=10)
    ok = [(0.0, True, 0.010)] * 10
    failing = [(0.0, True, 0.010)] * 7 + [(0.0, False, 0.010)] * 3
    assert judge(config, failing[:9], ok) is None  # 9 outcomes: too few to judge
    verdict = judge(config, failing, ok)
    assert (
        verdict is not None
        and verdict.reason == "error_rate"
        and verdict.figures["candidate"]["error_rate"] == 0.3
    )
    jitter = [(0.0, True, 0.040)] * 10  # 4x slower, but 30 ms: jitter
    assert judge(config, jitter, ok) is None
    slow = [(0.0, True, 0.200)] * 10
    verdict = judge(config, slow, ok)
    assert (
        verdict is not None and verdict.reason == "latency" and verdict.figures["candidate"]["p95_s"] == 0.2
    )
