"""Version control of variants through the admin API (docs/variants.md#version-control): each change
recorded with who, when, what and why; promote and rollback in one call; kept across a restart (Redis)."""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.app import build_app
from gateway.auth import hash_key, new_key
from gateway.config import parse_config
from policies.clock import SYSTEM, Clock, ManualClock
from tests.conftest import KEY, UPSTREAM_KEY
from tests.harness import ServerThread

# A gateway on Redis stopped after any admin request (GET /admin/deployments as well, on main) leaves one
# Redis connection unclosed: a leak outside this feature, reported to the lead; ignored here, not hidden there.
REDIS_LEAK = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
ADMIN_KEY = new_key()
ADMIN_ID = "admin:" + hash_key(ADMIN_KEY)[7:19]
START = 1_800_000_000.0


def _config(url: str, redis_url: str | None, v2_weight: float = 0) -> str:
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
    variants = {"v1": {"deployments": ["a"], "weight": 1}, "v2": {"deployments": ["b"], "weight": v2_weight}}
    stores = f"stores: {{redis_url: {redis_url}}}" if redis_url else ""
    return f"""
{stores}
admin: {{keys: ["{hash_key(ADMIN_KEY)}"]}}
models:
  - name: chat
    deployments: [{", ".join(deps)}]
    variants: {json.dumps(variants)}
tenants:
  - {{name: acme, keys: ["{hash_key(KEY)}"]}}
"""


@contextlib.contextmanager
def running(text: str, clock: Clock = SYSTEM) -> Iterator[ServerThread]:
    """A gateway process's lifetime: these tests restart it, on the same Redis."""
    loaded = parse_config(text, path="test-config.yaml", env={})
    server = ServerThread(lambda: build_app(loaded, clock)).start()
    try:
        yield server
    finally:
        server.stop()


def _admin(
    gateway: ServerThread, method: str, path: str, body: Any = None, key: str = ADMIN_KEY
) -> httpx.Response:
    return httpx.request(method, gateway.url + path, json=body, headers={"Authorization": f"Bearer {key}"})


def _change(gateway: ServerThread, **body: Any) -> dict[str, Any]:
    response = _admin(gateway, "POST", "/admin/aliases/chat/variants", body)
    assert response.status_code == 200, response.text
    return response.json()


def _served(gateway: ServerThread, n: int = 12) -> set[str]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        return {
            client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], user=f"u{i}"
            ).headers["x-gateway-variant"]
            for i in range(n)
        }


@REDIS_LEAK
def test_changes_promote_and_rollback_are_recorded_and_survive_a_restart(upstream, redis_server):
    clock = ManualClock(START)
    text = _config(upstream[0].url, redis_server.url)
    with running(text, clock) as gateway:
        history = _promote_and_roll_back(gateway, clock)
    with running(text, clock) as restarted:
        assert _served(restarted, 40) == {"v1", "v2"}  # the weights in force, not the YAML's
        assert _admin(restarted, "GET", "/admin/aliases/chat/history").json()["data"] == history
        current = _admin(restarted, "GET", "/admin/aliases/chat/variants").json()["variants"]
        assert current["v2"]["weight"] == 1
        # A second rollback undoes the change before: back to the YAML's weights.
        _change(restarted, action="rollback", why="undo the canary too")
        assert _served(restarted) == {"v1"}
    gc.collect()  # the leaked connection is collected here, under REDIS_LEAK, not in the next test


def _promote_and_roll_back(gateway: ServerThread, clock: ManualClock) -> list[dict[str, Any]]:
    assert _served(gateway) == {"v1"}

    clock.advance(60)
    _change(gateway, action="weights", weights={"v1": 1, "v2": 1}, why="canary at 50%")
    assert _served(gateway, 40) == {"v1", "v2"}
    clock.advance(60)
    promoted = _change(gateway, action="promote", variant="v2", why="v2 wins the eval")
    assert promoted["after"]["v2"]["weight"] == 100 and promoted["after"]["v1"]["weight"] == 0
    assert _served(gateway) == {"v2"}
    clock.advance(60)
    rolled = _change(gateway, action="rollback", why="complaints about v2")
    assert rolled["undoes"] == promoted["seq"]
    assert _served(gateway, 40) == {"v1", "v2"}  # back to the 50/50 before the promotion

    history = _admin(gateway, "GET", "/admin/aliases/chat/history").json()["data"]
    assert [(e["action"], e["who"], e["at"], e["why"]) for e in history] == [
        ("yaml", "config", START, "the config file's variants"),
        ("weights", ADMIN_ID, START + 60, "canary at 50%"),
        ("promote", ADMIN_ID, START + 120, "v2 wins the eval"),
        ("rollback", ADMIN_ID, START + 180, "complaints about v2"),
    ]
    assert history[1]["before"]["v2"]["weight"] == 0 and history[1]["after"]["v2"]["weight"] == 1
    return history


@REDIS_LEAK
def test_an_edited_yaml_wins_over_the_stored_variants_and_is_recorded(upstream, redis_server):
    with running(_config(upstream[0].url, redis_server.url)) as gateway:
        _change(gateway, action="promote", variant="v2", why="try v2")
    with running(_config(upstream[0].url, redis_server.url, v2_weight=0.5)) as edited:
        history = _admin(edited, "GET", "/admin/aliases/chat/history").json()["data"]
        assert [e["action"] for e in history] == ["yaml", "promote", "yaml"]
        assert history[-1]["before"]["v2"]["weight"] == 100 and history[-1]["after"]["v2"]["weight"] == 0.5
        assert _served(edited, 40) == {"v1", "v2"}
    gc.collect()


def test_add_a_variant_then_pin_it_by_header(upstream, start_gateway):
    gateway = start_gateway(_config(upstream[0].url, None))
    added = _change(
        gateway,
        action="add",
        name="v3",
        why="a prompt tweak",
        variant={"deployments": ["a"], "weight": 0, "system_prompt": "Be terse."},
    )
    assert "v3" in added["after"] and "v3" not in added["before"]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-gateway-variant": "v3"},
        )
    assert raw.headers["x-gateway-variant"] == "v3"
    assert upstream[1].requests[-1].body["messages"][0] == {"role": "system", "content": "Be terse."}


def test_bad_changes_are_refused_and_not_recorded(upstream, start_gateway):
    gateway = start_gateway(_config(upstream[0].url, None))
    path = "/admin/aliases/chat/variants"
    cases = [
        ({"action": "weights", "weights": {"v9": 1}, "why": "x"}, "weights"),
        ({"action": "weights", "weights": {"v1": -1}, "why": "x"}, "weights"),
        ({"action": "promote", "variant": "v9", "why": "x"}, "variant"),
        ({"action": "add", "name": "v3", "variant": {"deployments": ["nope"]}, "why": "x"}, "variant"),
        ({"action": "explode", "why": "x"}, "action"),
        ({"action": "promote", "variant": "v2"}, "why"),
        ({"action": "rollback", "why": "nothing yet"}, "action"),
        ({"action": "weights", "weights": {"v1": 0, "v2": 0}, "why": "x"}, "variant"),
    ]
    for body, param in cases:
        response = _admin(gateway, "POST", path, body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    assert [e["action"] for e in _admin(gateway, "GET", "/admin/aliases/chat/history").json()["data"]] == [
        "yaml"
    ]
    assert (
        _admin(gateway, "POST", path, {"action": "promote", "variant": "v2", "why": "x"}, key=KEY).status_code
        == 403
    )
    assert _admin(gateway, "GET", "/admin/aliases/nope/history").status_code == 404
