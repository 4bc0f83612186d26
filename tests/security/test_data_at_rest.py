"""Stored bodies sealed with AES-GCM (keys from files made in the test, rotation by key id), and the erasure
of a tenant's stored data through the admin API."""

from __future__ import annotations

import base64
import os

import httpx
import openai
import redis

from tests.conftest import KEY, OTHER_KEY, config_text
from tests.security.serve import ADMIN, ADMIN_KEY, poll

CHAT = {
    "model": "chat",
    "messages": [{"role": "user", "content": "the secret plan is blue"}],
    "temperature": 0,
}


def _key(tmp_path, name: str) -> str:
    path = tmp_path / name
    path.write_text(base64.b64encode(os.urandom(32)).decode())
    return str(path)


def _config(upstream_url: str, redis_url: str, keys: list[tuple[str, str]]) -> str:
    listed = ", ".join(f"{{id: {key_id}, file: {path}}}" for key_id, path in keys)
    return (
        config_text(upstream_url)
        + f"""
stores: {{redis_url: "{redis_url}"}}
cache: {{enabled: true}}
encryption: {{keys: [{listed}]}}
"""
    )


def _ask(gateway) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"}
    )


def test_cached_answers_are_ciphertext_in_redis_and_keys_rotate(
    start_gateway, upstream, redis_server, tmp_path
):
    old, new = _key(tmp_path, "old"), _key(tmp_path, "new")
    gateway = start_gateway(_config(upstream[0].url, redis_server.url, [("k1", old)]))
    assert _ask(gateway).headers["x-cache"] == "miss"
    assert _ask(gateway).headers["x-cache"] == "hit-exact"
    with redis.Redis.from_url(redis_server.url) as client:

        def entries() -> dict[bytes, bytes]:
            found: dict[bytes, bytes] = {}
            for name in client.keys("gw:cache:*"):
                value = client.get(name) if client.type(name) == b"string" else None
                if isinstance(name, bytes) and isinstance(value, bytes):
                    found[name] = value
            return found

        values = list(entries().values())
        assert values and all(v.startswith(b"gwenc1.k1.") for v in values)
        assert not any(b"secret plan" in v or b"Echo" in v for v in values)
        # rotation: the new key seals, the old one still opens what it sealed
        rotated = start_gateway(_config(upstream[0].url, redis_server.url, [("k2", new), ("k1", old)]))
        assert _ask(rotated).headers["x-cache"] == "hit-exact"
        other = {**CHAT, "messages": [{"role": "user", "content": "another question"}]}
        httpx.post(
            rotated.url + "/v1/chat/completions", json=other, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert poll(lambda: any(v.startswith(b"gwenc1.k2.") for v in entries().values()))
        # the old key retired: what it sealed no longer opens (a miss, answered again by the upstream)
        retired = start_gateway(_config(upstream[0].url, redis_server.url, [("k2", new)]))
        assert _ask(retired).headers["x-cache"] == "miss"
        assert poll(lambda: all(v.startswith(b"gwenc1.k2.") for v in entries().values()))
        # tampering: each value is bound to its entry's key, so swapped values open for neither
        (first, a), (second, b) = entries().items()
        client.set(first, b)
        client.set(second, a)
        assert _ask(retired).headers["x-cache"] == "miss"
        # the answer is stored again (sealed for its own key) before the gateways stop
        assert poll(lambda: b not in entries().values() or a not in entries().values())


def test_a_key_that_cannot_be_read_refuses_to_start(start_gateway, upstream, redis_server, tmp_path):
    short = tmp_path / "short"
    short.write_text(base64.b64encode(b"too short").decode())
    from gateway.config import ConfigError

    try:
        start_gateway(_config(upstream[0].url, redis_server.url, [("k1", str(short))]))
    except ConfigError as exc:
        assert "a key is 32 bytes (AES-256), this one is 9" in str(exc)
    else:
        raise AssertionError("a 9-byte key was accepted")


def test_erasing_a_tenants_data_says_what_it_erased(start_gateway, upstream, tmp_path):
    text = (
        config_text(upstream[0].url)
        + ADMIN
        + f"""
cache: {{enabled: true}}
request_log: {{path: {tmp_path / "requests.db"}, flush_interval_s: 0.05}}
"""
    )
    gateway = start_gateway(text)
    for key in (KEY, OTHER_KEY):
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as client:
            for question in ("one", "two"):
                client.chat.completions.create(
                    model="chat", temperature=0, messages=[{"role": "user", "content": question}]
                )
            client.responses.create(model="chat", input="remember this")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def logged(tenant: str) -> int:
        return len(
            httpx.get(gateway.url + "/admin/requests", params={"tenant": tenant}, headers=admin).json()[
                "data"
            ]
        )

    assert poll(lambda: logged("acme") >= 3 and logged("globex") >= 3)
    assert (
        httpx.delete(
            gateway.url + "/admin/tenants/acme/data", headers={"Authorization": f"Bearer {KEY}"}
        ).status_code
        == 403
    )
    erased = httpx.delete(gateway.url + "/admin/tenants/acme/data", headers=admin)
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["erased"]["cache_entries"] == 2 and body["erased"]["stored_responses"] == 1
    assert body["erased"]["request_log_records"] >= 3
    assert logged("acme") == 0 and logged("globex") >= 3
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        again = client.chat.completions.with_raw_response.create(
            model="chat", temperature=0, messages=[{"role": "user", "content": "one"}]
        )
        assert again.headers["x-cache"] == "miss"
    assert httpx.delete(gateway.url + "/admin/tenants/nobody/data", headers=admin).status_code == 404
