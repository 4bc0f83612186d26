"""The control plane: keys and tenants made, rotated, expired and revoked through the admin API, used at once by
real clients, refused where the YAML owns the object, recorded in the audit list; and, with two gateway
processes on one redis-server, a change made on one replica taking effect on the other."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.auth import hash_key, new_key
from policies.clock import ManualClock
from tests.conftest import KEY, config_text
from tests.ops.gateway_process import GatewayProcess, poll
from tests.redis_server import RedisServer

ADMIN_KEY = new_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ADMIN_ID = hash_key(ADMIN_KEY)[7:19]
ASK = [{"role": "user", "content": "hello there"}]


def admin_config(upstream_url: str, extra: str = "") -> str:
    return (
        config_text(upstream_url)
        + f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
request_log:
  enabled: false
{extra}"""
    )


def admin(gateway, method: str, path: str, key: str = ADMIN_KEY, **kwargs) -> httpx.Response:
    return httpx.request(
        method, gateway.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10, **kwargs
    )


def chat(gateway, key: str, model: str = "chat") -> int:
    """The status a real OpenAI client gets for one chat completion with ``key``."""
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as client:
        try:
            client.chat.completions.create(model=model, messages=ASK)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            return exc.status_code
    return 200


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def gateway(upstream, start_gateway, clock):
    return start_gateway(admin_config(upstream[0].url), clock=clock)


def test_a_runtime_tenant_and_its_key_work_at_once_with_their_limits_and_model_access(gateway, clock):
    made = admin(
        gateway, "POST", "/admin/tenants", json={"name": "initech", "models": ["chat"], "limits": {"rpm": 2}}
    )
    assert made.status_code == 201, made.text
    assert made.json()["source"] == "runtime" and made.json()["limits"]["rpm"] == 2
    created = admin(gateway, "POST", "/admin/keys", json={"tenant": "initech", "name": "ci"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("gw-") and created.json()["id"] == hash_key(key)[7:19]
    assert chat(gateway, key) == 200
    assert chat(gateway, key, "embed") == 404  # not in its models
    assert chat(gateway, key) == 200
    assert chat(gateway, key) == 429  # rpm 2 (the clock does not move: no refill)
    # model access changed at runtime
    changed = admin(gateway, "PATCH", "/admin/tenants/initech", json={"models": ["chat", "embed"]})
    assert changed.status_code == 200 and changed.json()["models"] == ["chat", "embed"]
    assert changed.json()["limits"]["rpm"] == 2  # the fields not given stay
    clock.advance(60)  # the minute's requests refill
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as client:
        assert client.embeddings.create(model="embed", input="x").data
    # the runtime tenant is listed beside the YAML's, and its usage is readable
    tenants = {t["name"]: t["source"] for t in admin(gateway, "GET", "/admin/tenants").json()["data"]}
    assert tenants == {"acme": "config", "globex": "config", "initech": "runtime"}
    usage = admin(gateway, "GET", "/admin/usage", params={"tenant": "initech", "group_by": "model"})
    assert usage.status_code == 200
    assert {row["model"]: row["requests"] for row in usage.json()["data"]} == {"chat": 2, "embed": 1}


def test_keys_expire_rotate_and_revoke(gateway, clock):
    key = admin(gateway, "POST", "/admin/keys", json={"tenant": "acme", "expires_in_s": 60}).json()["key"]
    key_id = hash_key(key)[7:19]
    assert chat(gateway, key) == 200
    clock.advance(61)
    assert chat(gateway, key) == 401
    listed = {
        k["id"]: k for k in admin(gateway, "GET", "/admin/keys", params={"tenant": "acme"}).json()["data"]
    }
    assert listed[key_id]["expired"] is True and listed[hash_key(KEY)[7:19]]["source"] == "config"
    # un-expire it, then rotate with a grace period: both work until the grace ends
    assert admin(gateway, "PATCH", f"/admin/keys/{key_id}", json={"expires_at": None}).status_code == 200
    assert chat(gateway, key) == 200
    rotated = admin(gateway, "POST", f"/admin/keys/{key_id}/rotate", json={"grace_s": 30})
    assert rotated.status_code == 201
    new = rotated.json()["key"]
    assert chat(gateway, new) == 200 and chat(gateway, key) == 200
    clock.advance(31)
    assert chat(gateway, key) == 401 and chat(gateway, new) == 200
    # revoked: refused at once
    new_id = rotated.json()["id"]
    assert admin(gateway, "DELETE", f"/admin/keys/{new_id}").json()["revoked"] is True
    assert chat(gateway, new) == 401
    assert admin(gateway, "DELETE", f"/admin/keys/{new_id}").status_code == 404
    # every change recorded: who, when, what (newest first)
    records = admin(gateway, "GET", "/admin/control-plane/changes").json()["data"]
    assert [r["action"] for r in records] == ["key.revoke", "key.rotate", "key.expire", "key.create"]
    assert {r["who"] for r in records} == {ADMIN_ID}
    assert records[-1]["target"] == key_id and records[-1]["detail"]["tenant"] == "acme"
    assert records[0]["ts"] == clock.time()


def test_yaml_objects_are_read_only_and_bad_input_gets_a_clear_error(gateway):
    yaml_key = hash_key(KEY)[7:19]
    refused = admin(gateway, "DELETE", f"/admin/keys/{yaml_key}")
    assert refused.status_code == 403 and "YAML" in refused.json()["error"]["message"]
    assert admin(gateway, "PATCH", "/admin/tenants/acme", json={"limits": {"rpm": 1}}).status_code == 403
    clash = admin(gateway, "POST", "/admin/tenants", json={"name": "acme"})
    assert clash.status_code == 409 and clash.json()["error"]["param"] == "name"
    bad = admin(gateway, "POST", "/admin/tenants", json={"name": "x", "limits": {"rpm": -1}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limits"
    unknown = admin(gateway, "POST", "/admin/tenants", json={"name": "x", "colour": "red"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "colour"
    alias = admin(gateway, "POST", "/admin/tenants", json={"name": "x", "models": ["nope"]})
    assert alias.status_code == 400 and alias.json()["error"]["param"] == "models"
    assert admin(gateway, "POST", "/admin/keys", json={"tenant": "nobody"}).status_code == 404
    assert admin(gateway, "POST", "/admin/keys", content=b"not json").status_code == 400
    expiry = admin(gateway, "POST", "/admin/keys", json={"tenant": "acme", "expires_in_s": "soon"})
    assert expiry.status_code == 400 and expiry.json()["error"]["param"] == "expires_in_s"
    # a tenant key lists its own tenant's keys and changes nothing
    assert {k["tenant"] for k in admin(gateway, "GET", "/admin/keys", KEY).json()["data"]} == {"acme"}
    assert admin(gateway, "GET", "/admin/keys", KEY, params={"tenant": "globex"}).status_code == 403
    assert admin(gateway, "POST", "/admin/keys", KEY, json={"tenant": "acme"}).status_code == 403
    assert admin(gateway, "GET", "/admin/control-plane/changes").json()["data"] == []  # nothing was changed


@pytest.fixture
def two_replicas(upstream, tmp_path) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    redis = RedisServer()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        admin_config(
            upstream[0].url,
            f"""stores:
  redis_url: {redis.url}
control_plane:
  poll_interval_s: 0.1
""",
        )
    )
    a = GatewayProcess(config, tmp_path / "a.log")
    b = GatewayProcess(config, tmp_path / "b.log")
    try:
        yield a.wait_ready(), b.wait_ready()
    finally:
        a.stop()
        b.stop()
        redis.remove()


def test_a_change_on_one_replica_takes_effect_on_the_other(two_replicas):
    a, b = two_replicas
    assert admin(a, "POST", "/admin/tenants", json={"name": "initech", "models": ["chat"]}).status_code == 201
    key = admin(a, "POST", "/admin/keys", json={"tenant": "initech"}).json()["key"]
    poll(lambda: chat(b, key) == 200, "the key made on replica a works on replica b", timeout_s=5)
    assert chat(b, key, "embed") == 404
    assert admin(b, "PATCH", "/admin/tenants/initech", json={"models": "*"}).status_code == 200
    poll(lambda: chat(a, key, "embed") == 200, "model access changed on b applies on a", timeout_s=5)
    key_id = hash_key(key)[7:19]
    assert admin(b, "DELETE", f"/admin/keys/{key_id}").status_code == 200
    poll(lambda: chat(a, key) == 401, "the key revoked on b is refused on a", timeout_s=5)
    assert [r["action"] for r in admin(a, "GET", "/admin/control-plane/changes").json()["data"]] == [
        "key.revoke",
        "tenant.update",
        "key.create",
        "tenant.create",
    ]
