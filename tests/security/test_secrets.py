"""No secret the gateway holds leaves it: an upstream that quotes the gateway's credentials in its error reaches
the client (and the log) without them, and its refusal of those credentials is the operator's 502, not the
client's 401."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.conftest import KEY, LOG_PATH, UPSTREAM_KEY, config_text
from tests.security.serve import error_of

ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}


def leaky_gateway(start_gateway, upstream, status):
    extra = f"""  - name: leaky
    deployments:
      - {{provider: openai-compatible, model: echo-auth-{status}, api_base: "{upstream[0].url}/v1",
          api_key: {UPSTREAM_KEY}}}"""
    return start_gateway(config_text(upstream[0].url, extra))


def _no_secret(text: str) -> None:
    assert UPSTREAM_KEY not in text
    assert UPSTREAM_KEY[:24] not in text


@pytest.mark.parametrize("status", [401, 403, 500])
def test_an_upstream_quoting_its_key_never_reaches_the_client(start_gateway, upstream, status):
    gateway = leaky_gateway(start_gateway, upstream, status)
    chat = {"model": "leaky", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    answers = [
        httpx.post(gateway.url + "/v1/chat/completions", json=chat, headers=headers),
        httpx.post(gateway.url + "/v1/chat/completions", json={**chat, "stream": True}, headers=headers),
        httpx.post(gateway.url + "/v1/completions", json={"model": "leaky", "prompt": "hi"}, headers=headers),
        httpx.post(
            gateway.url + "/v1/messages",
            headers={"x-api-key": KEY, **ANTHROPIC_VERSION},
            json={"model": "leaky", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        ),
    ]
    assert len(upstream[1].requests) >= 4  # the upstream was asked, and did quote the key
    for response in answers:
        assert response.status_code == (502 if status in (401, 403) else 500), response.text
        _no_secret(response.text)
        if status == 500:
            assert "[redacted]" in response.text
    _no_secret(LOG_PATH.read_text())


def test_an_upstream_refusing_the_gateways_key_is_a_502_for_the_operator(start_gateway, upstream):
    gateway = leaky_gateway(start_gateway, upstream, 401)
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client,
        pytest.raises(openai.InternalServerError) as raised,
    ):
        client.chat.completions.create(model="leaky", messages=[{"role": "user", "content": "hi"}])
    error = error_of(raised)
    assert raised.value.status_code == 502
    assert error["code"] == "upstream_auth_failed" and error["type"] == "upstream_error"
    assert "operator must check the deployment's api_key" in error["message"]
    assert "Your own API key was accepted" in error["message"]
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as claude,
        pytest.raises(anthropic.APIStatusError) as refused,
    ):
        claude.messages.create(model="leaky", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 502 and "operator" in refused.value.message
