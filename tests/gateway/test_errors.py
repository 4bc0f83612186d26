"""Bad input, bad keys and failing upstreams: clean OpenAI-format errors with the right status."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway.app import build_app
from gateway.config import parse_config
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY, config_text, log_line
from tests.harness import ServerThread, free_port
from tests.openapi import validate

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def post(gateway, body=None, *, key=KEY, path="/v1/chat/completions", content=None, headers=None):
    all_headers = {"Authorization": f"Bearer {key}"} if key else {}
    all_headers.update(headers or {})
    if content is not None:
        return httpx.post(gateway.url + path, content=content, headers=all_headers, timeout=20)
    return httpx.post(gateway.url + path, json=body, headers=all_headers, timeout=20)


def assert_error(response, status, code=None, type_=None):
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    if code is not None:
        assert body["error"]["code"] == code
    if type_ is not None:
        assert body["error"]["type"] == type_
    assert response.headers["x-request-id"]
    return body["error"]


def test_missing_and_wrong_keys_are_401(gateway):
    assert_error(post(gateway, CHAT, key=None), 401, "missing_api_key")
    assert_error(post(gateway, CHAT, key="gw-not-a-key"), 401, "invalid_api_key")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_model_the_tenant_may_not_use_is_404_model_not_found(gateway):
    error = assert_error(post(gateway, {**CHAT, "model": "private"}), 404, "model_not_found")
    assert "private" in error["message"]
    assert_error(post(gateway, {**CHAT, "model": "no-such-alias"}), 404, "model_not_found")
    assert post(gateway, {**CHAT, "model": "private"}, key=OTHER_KEY).status_code == 200


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "chat"}, "messages"),
        ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({**CHAT, "messages": "hello"}, "messages"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "temperature": 7}, "temperature"),
        ({**CHAT, "n": True}, "n"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "stop": [1, 2]}, "stop"),
    ],
)
def test_wrong_fields_are_400_naming_the_param(gateway, upstream, body, param):
    before = len(upstream[1].requests)
    error = assert_error(post(gateway, body), 400, type_="invalid_request_error")
    assert error["param"] == param
    assert len(upstream[1].requests) == before  # refused before any upstream call


def test_malformed_json_and_non_object_bodies_are_400(gateway):
    assert_error(post(gateway, content=b'{"model": "chat", '), 400)
    assert_error(post(gateway, content=b"[1, 2]"), 400)
    assert_error(post(gateway, content=b"\xff\xfe"), 400)
    assert_error(
        post(gateway, path="/v1/embeddings", body={"model": "embed"}), 400, "missing_required_parameter"
    )
    assert_error(
        post(gateway, path="/v1/completions", body={"model": "chat"}), 400, "missing_required_parameter"
    )


def test_body_over_the_limit_is_413(upstream, start_gateway):
    gateway = start_gateway(config_text(upstream[0].url, server="  max_body_bytes: 2048"))
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    assert_error(post(gateway, big), 413, "request_too_large")
    assert post(gateway, CHAT).status_code == 200  # the worker is fine afterwards


def test_unknown_path_404_and_wrong_method_405_in_json(gateway):
    assert_error(httpx.get(gateway.url + "/v1/nope"), 404, "not_found")
    assert_error(httpx.get(gateway.url + "/v1/chat/completions"), 405, "method_not_allowed")


@pytest.mark.parametrize("status", [400, 429, 500, 503])  # 401/403: tests/security/test_secrets.py
def test_upstream_errors_keep_their_status_and_openai_shape(upstream, start_gateway, status):
    extra = f"""  - name: failing
    deployments:
      - {{provider: openai-compatible, model: error-{status}, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY}}}"""
    gateway = start_gateway(config_text(upstream[0].url, extra))
    response = post(gateway, {**CHAT, "model": "failing"})
    error = assert_error(response, status)
    assert error["message"] == f"fake upstream error {status}"
    if status == 429:
        assert response.headers["retry-after"] == "1"
        assert error["type"] == "rate_limit_error"
    assert UPSTREAM_KEY not in response.text


def test_unreachable_upstream_is_502_and_timeout_is_504(upstream, start_gateway):
    extra = f"""  - name: down
    deployments:
      - {{provider: openai-compatible, model: m, api_base: "http://127.0.0.1:{free_port()}/v1", api_key: k}}
  - name: hanging
    deployments:
      - {{provider: openai-compatible, model: hang, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY},
          timeouts: {{connect_s: 1, read_s: 0.5}}}}"""
    gateway = start_gateway(config_text(upstream[0].url, extra))
    assert_error(post(gateway, {**CHAT, "model": "down"}), 502, "upstream_unreachable")
    assert_error(post(gateway, {**CHAT, "model": "hanging"}), 504, "upstream_timeout", "timeout")


@pytest.mark.parametrize(
    "model, status", [("reset", 502), ("bad-json", 502), ("wrong-content-type", 502), ("error-body-200", 502)]
)
def test_broken_upstream_answers_become_clean_errors(upstream, start_gateway, model, status):
    extra = f"""  - name: broken
    deployments:
      - {{provider: openai-compatible, model: {model}, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY}}}"""
    gateway = start_gateway(config_text(upstream[0].url, extra))
    assert_error(post(gateway, {**CHAT, "model": "broken"}), status)
    assert_error(post(gateway, {**CHAT, "model": "broken", "stream": True}), status)
    assert post(gateway, CHAT).status_code == 200


def test_stream_cut_midway_ends_with_an_error_event(upstream, start_gateway):
    extra = f"""  - name: cut
    deployments:
      - {{provider: openai-compatible, model: cut-stream, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY}}}"""
    gateway = start_gateway(config_text(upstream[0].url, extra))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="cut", stream=True, messages=[{"role": "user", "content": "a b c d e"}]
        )
        received = []
        with pytest.raises(openai.APIError, match="broke off its stream"):
            for chunk in stream:
                received.append(chunk)
        assert received  # the first chunks got through before the error


def test_disabled_deployment_is_503_and_hidden_from_models(upstream, start_gateway):
    extra = """  - name: needs-key
    deployments:
      - {provider: openai, model: gpt-4o-mini, api_key: "${MISSING_TEST_KEY}"}"""
    gateway = start_gateway(config_text(upstream[0].url, extra))
    error = assert_error(post(gateway, {**CHAT, "model": "needs-key"}), 503, "service_unavailable")
    assert "MISSING_TEST_KEY is not set" in error["message"]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        assert "needs-key" not in [m.id for m in client.models.list()]
    ready = httpx.get(gateway.url + "/readyz").json()
    assert ready["deployments"]["disabled"][0]["reason"] == "environment variable MISSING_TEST_KEY is not set"


def test_the_request_log_line_takes_the_errors_level(upstream, start_gateway):
    """Client errors log at info (a wrong key at warning), upstream failures at warning, a bug at error."""
    extra = f"""  - name: failing
    deployments:
      - {{provider: openai-compatible, model: error-500, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY}}}
  - name: down
    deployments:
      - {{provider: openai-compatible, model: m, api_base: "http://127.0.0.1:{free_port()}/v1", api_key: k}}"""
    gateway = start_gateway(config_text(upstream[0].url, extra))
    cases = [
        (post(gateway, CHAT), 200, "info"),
        (post(gateway, {"model": "chat"}), 400, "info"),
        (post(gateway, {**CHAT, "model": "nope"}), 404, "info"),
        (post(gateway, CHAT, key="gw-not-a-key"), 401, "warning"),
        (post(gateway, {**CHAT, "model": "failing"}), 500, "warning"),
        (post(gateway, {**CHAT, "model": "down"}), 502, "warning"),
    ]
    for response, status, level in cases:
        assert response.status_code == status, response.text
        line = log_line(response.headers["x-request-id"])
        assert (line["status"], line["level"]) == (status, level)


def test_a_bug_answers_500_internal_error_and_logs_at_error(upstream):
    # A handler with a bug, added to the real app: the middleware answers and logs it.
    async def broken(request):
        raise RuntimeError("a bug")

    def make_app():
        app = build_app(parse_config(config_text(upstream[0].url), path="test-config.yaml", env={}))
        app.router.add_post("/v1/broken", broken)
        return app

    server = ServerThread(make_app).start()
    try:
        response = post(server, CHAT, path="/v1/broken")
        assert_error(response, 500, "internal_error", "api_error")
        line = log_line(response.headers["x-request-id"])
        assert (line["status"], line["level"]) == (500, "error")
    finally:
        server.stop()
