"""What only some providers do: Gemini's safety blocks and embeddings, Bedrock's credentials from config,
API keys and regions, and truncated or unreachable upstreams, which are never passed off as answers."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import KEY, UPSTREAM_KEY, config_text
from tests.fakes import bedrock_upstream
from tests.fakes.providers import BEDROCK_MODEL, PROVIDERS
from tests.harness import free_port


@pytest.fixture
def oai(provider_gateway):
    with openai.OpenAI(base_url=provider_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.mark.parametrize("alias", ["gemini-blocked", "gemini-unsafe"])
def test_gemini_safety_blocks_are_content_filter(oai, alias):
    whole = oai.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}])
    assert whole.choices[0].finish_reason == "content_filter"
    assert not whole.choices[0].message.content or alias == "gemini-unsafe"
    chunks = list(
        oai.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}], stream=True)
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
    assert chunks[0].choices[0].delta.role == "assistant"


def test_gemini_embeddings(oai, fakes):
    result = oai.embeddings.create(model="gemini", input=["one", "three"], dimensions=3)
    assert [d.embedding for d in result.data] == [[0.3, 0.5, 0.25], [0.5, 0.5, 0.25]]
    assert result.usage.prompt_tokens == 2
    sent = fakes.gemini.state.requests[-1]
    assert sent.path.endswith("/models/gemini-2.0-flash:batchEmbedContents")
    assert sent.body["requests"][0] == {
        "model": "models/gemini-2.0-flash",
        "content": {"parts": [{"text": "one"}]},
        "outputDimensionality": 3,
    }


@pytest.mark.parametrize("provider", ["anthropic", "bedrock"])
def test_embeddings_elsewhere_are_a_clear_400(oai, provider):
    with pytest.raises(openai.BadRequestError, match="chat completions only"):
        oai.embeddings.create(model=provider, input="x")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_cut_stream_ends_in_an_error_not_a_short_answer(oai, provider, fakes):
    with pytest.raises(openai.APIError) as failed:
        list(
            oai.chat.completions.create(
                model=f"{provider}-cut", stream=True, messages=[{"role": "user", "content": "a b c d e f"}]
            )
        )
    assert "stream" in str(failed.value) or "broke off" in str(failed.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unreachable_upstream_is_a_502(start_gateway, upstream, provider, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    dead = f"http://127.0.0.1:{free_port()}"
    base = {"anthropic": f"{dead}/v1", "gemini": f"{dead}/v1beta", "bedrock": dead}[provider]
    gateway = start_gateway(
        config_text(
            upstream[0].url,
            f"""  - name: dead
    deployments:
      - provider: {provider}
        model: some-model
        api_base: {base}
        api_key: {UPSTREAM_KEY}""",
        )
    )
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client,
        pytest.raises(openai.APIStatusError) as failed,
    ):
        client.chat.completions.create(model="dead", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502
    assert isinstance(failed.value.body, dict) and failed.value.body["code"] == "upstream_unreachable"


def _bedrock_gateway(start_gateway, upstream, fakes, settings: str):
    return start_gateway(
        config_text(
            upstream[0].url,
            f"""  - name: claude
    deployments:
      - provider: bedrock
        model: "{BEDROCK_MODEL}"
        api_base: {fakes.bedrock.url}
{settings}""",
        ),
        env={"BEDROCK_SECRET": bedrock_upstream.SECRET_KEY},
    )


def test_bedrock_credentials_and_region_from_config(start_gateway, upstream, fakes, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    fakes.aws.region = "eu-west-3"
    gateway = _bedrock_gateway(
        start_gateway,
        upstream,
        fakes,
        f"""        aws_region: eu-west-3
        aws_access_key_id: {bedrock_upstream.ACCESS_KEY}
        aws_secret_access_key: ${{BEDROCK_SECRET}}
        aws_session_token: session-token-1""",
    )
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        answer = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Echo: hi"
    seen = fakes.bedrock.state.requests[-1]
    assert seen.headers["X-Amz-Security-Token"] == "session-token-1"
    assert "/eu-west-3/bedrock/aws4_request" in seen.headers["Authorization"]
    assert seen.path == f"/model/{BEDROCK_MODEL}/converse" and fakes.aws.signatures_checked == 1


def test_bedrock_wrong_secret_is_the_operators_502(start_gateway, upstream, fakes):
    gateway = _bedrock_gateway(
        start_gateway,
        upstream,
        fakes,
        f"""        aws_region: us-east-1
        aws_access_key_id: {bedrock_upstream.ACCESS_KEY}
        aws_secret_access_key: not-the-secret""",
    )
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client,
        pytest.raises(openai.InternalServerError, match="refused the gateway's credentials") as raised,
    ):
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    body = raised.value.body
    assert (
        raised.value.status_code == 502 and isinstance(body, dict) and body["code"] == "upstream_auth_failed"
    )


def test_bedrock_api_key_is_sent_as_bearer(start_gateway, upstream, fakes):
    gateway = _bedrock_gateway(start_gateway, upstream, fakes, f"        api_key: {UPSTREAM_KEY}")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        answer = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Echo: hi"
    assert fakes.bedrock.state.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_bedrock_without_a_region_says_so(start_gateway, upstream, fakes, monkeypatch, tmp_path):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    gateway = start_gateway(
        config_text(
            upstream[0].url,
            f"""  - name: claude
    deployments:
      - provider: bedrock
        model: "{BEDROCK_MODEL}"
        aws_access_key_id: AKID
        aws_secret_access_key: secret""",
        )
    )
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client,
        pytest.raises(openai.APIStatusError, match="AWS_REGION") as failed,
    ):
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 503
    assert json.dumps(failed.value.body).count("secret") == 0
