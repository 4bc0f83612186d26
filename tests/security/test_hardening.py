"""Bad input a hostile client sends gets a 4xx in OpenAI's format, the log stays bounded and key-free, and
anonymous callers learn nothing about the host."""

from __future__ import annotations

import httpx

from tests.conftest import KEY, LOG_PATH

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def _log_since(offset: int) -> str:
    with LOG_PATH.open("rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")


def test_a_key_that_is_not_utf8_is_a_401_not_a_500(gateway):
    bad = b"Bearer gw-\xff\xfe\xc3("
    for path, method in (
        ("/v1/chat/completions", "POST"),
        ("/v1/models", "GET"),
        ("/admin/usage", "GET"),
        ("/admin/deployments", "GET"),
    ):
        response = httpx.request(method, gateway.url + path, headers={b"Authorization": bad}, json=CHAT)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_deeply_nested_json_is_a_400_and_a_short_log_line(gateway):
    offset = LOG_PATH.stat().st_size
    for depth in (100, 254, 1000):
        nested = "[" * depth + "]" * depth
        body = f'{{"model": "chat", "messages": [{{"role": "user", "content": "hi"}}], "metadata": {nested}}}'
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            content=body.encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text
        assert "nested more than 64 levels" in response.json()["error"]["message"]
    written = _log_since(offset)
    assert len(written) < 3 * 2048, len(written)  # three request lines, no traceback
    assert "Traceback" not in written


def test_anonymous_callers_learn_nothing_about_the_host(gateway):
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200
    assert "/" not in str(ready.json().get("config", "")) and "config" not in ready.json()
    for response in (
        ready,
        httpx.get(gateway.url + "/v1/nope"),
        httpx.get(gateway.url + "/healthz"),
        httpx.post(
            gateway.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"}
        ),
    ):
        assert response.headers["Server"] == "llm-gateway"
        assert "aiohttp" not in response.text and "Python" not in response.text
