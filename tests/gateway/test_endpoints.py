"""Completions, embeddings, models, health, readiness and metrics."""

from __future__ import annotations

import httpx

from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY, config_text
from tests.openapi import validate


def test_completions_plain_and_streamed(client):
    completion = client.completions.create(model="chat", prompt="say this")
    assert completion.choices[0].text == "Echo: say this"
    text = "".join(
        c.choices[0].text for c in client.completions.create(model="chat", prompt="x y", stream=True)
    )
    assert text.split() == ["Echo:", "x", "y"]


def test_embeddings_are_valid_openai_responses(client, upstream):
    raw = client.embeddings.with_raw_response.create(
        model="embed", input=["a", "bb"], encoding_format="float"
    )
    validate("CreateEmbeddingResponse", raw.http_response.json())
    assert len(raw.parse().data) == 2
    assert upstream[1].requests[-1].body["model"] == "fake-embed"


def test_models_lists_only_the_tenants_aliases(gateway, client):
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", raw.http_response.json())
    assert sorted(m.id for m in raw.parse()) == ["chat", "embed", "hanging", "slow"]
    assert client.models.retrieve("chat").id == "chat"
    response = httpx.get(gateway.url + "/v1/models/private", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    other = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {OTHER_KEY}"}).json()
    assert "private" in [m["id"] for m in other["data"]]


def test_health_and_readiness(gateway):
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["deployments"]["enabled"] == 5


def test_metrics_count_requests_tokens_and_errors_per_tenant_and_alias(gateway, client):
    def sample(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = httpx.get(gateway.url + "/metrics").text
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "count me"}])
    list(
        client.chat.completions.create(
            model="chat",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "stream me"}],
        )
    )
    httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "chat", "messages": "bad"},
    )
    after = httpx.get(gateway.url + "/metrics").text
    ok = 'gateway_requests_total{alias="chat",status="200",tenant="acme"}'
    bad = 'gateway_requests_total{alias="chat",status="400",tenant="acme"}'
    assert sample(after, ok) - sample(before, ok) == 2
    assert sample(after, bad) - sample(before, bad) == 0  # refused before the alias was known
    assert (
        sample(after, 'gateway_requests_total{alias="-",status="400"')
        - sample(before, 'gateway_requests_total{alias="-",status="400"')
        == 1
    )
    completion = 'gateway_tokens_total{alias="chat",kind="completion",tenant="acme"}'
    assert sample(after, completion) - sample(before, completion) == 3 + 3
    ttft = 'gateway_time_to_first_token_seconds_count{alias="chat",tenant="acme"}'
    assert sample(after, ttft) - sample(before, ttft) == 1
    assert "gateway_request_duration_seconds_bucket" in after and "gateway_overhead_seconds_bucket" in after


def test_azure_deployment_path_api_version_and_key_header(upstream, start_gateway):
    extra = f"""  - name: azure-chat
    deployments:
      - {{provider: azure, model: my-gpt4o, api_base: "{upstream[0].url}", api_key: {UPSTREAM_KEY},
          api_version: "2024-10-21"}}"""  # date-ok: Azure's API version
    gateway = start_gateway(config_text(upstream[0].url, extra))
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "azure-chat", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text
    seen = upstream[1].requests[-1]
    assert seen.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert seen.query == {"api-version": "2024-10-21"}  # date-ok
    assert seen.headers["api-key"] == UPSTREAM_KEY and "Authorization" not in seen.headers
