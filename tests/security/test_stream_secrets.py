"""An upstream that writes the gateway's credential into the middle of a stream (split across text deltas and
network writes, or in an error event) reaches neither the client nor the log with it: chat completions,
``/v1/messages`` and ``/v1/responses``, native and translated."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.conftest import KEY, LOG_PATH, UPSTREAM_KEY, config_text
from tests.fakes import leaky_upstream
from tests.harness import ServerThread


@pytest.fixture
def leaky():
    server = ServerThread(leaky_upstream.build_app).start()
    yield server
    server.stop()


@pytest.fixture
def gateway(start_gateway, upstream, leaky):
    models = []
    for provider, base in (("openai-compatible", "/v1"), ("anthropic", "/v1"), ("openai", "/v1")):
        for model in ("leak", "leak-error"):
            models.append(f"""  - name: {provider}-{model}
    deployments:
      - {{provider: {provider}, model: {model}, api_base: "{leaky.url}{base}", api_key: {UPSTREAM_KEY}}}""")
    return start_gateway(config_text(upstream[0].url, "\n".join(models)))


def _clean(text: str) -> None:
    assert UPSTREAM_KEY not in text
    assert UPSTREAM_KEY[len(UPSTREAM_KEY) // 2 :] not in text  # neither half of the split secret
    assert UPSTREAM_KEY[: len(UPSTREAM_KEY) // 2] not in text


EXPECTED = leaky_upstream.expected_text(UPSTREAM_KEY)


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic", "openai"])
def test_a_secret_streamed_in_chat_completions_is_redacted(gateway, provider):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=f"{provider}-leak", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED
    assert chunks[-1].choices[0].finish_reason == "stop"
    _clean(LOG_PATH.read_text())


@pytest.mark.parametrize("provider", ["anthropic", "openai-compatible"])
def test_a_secret_streamed_in_messages_is_redacted(gateway, provider):
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as claude:
        with claude.messages.stream(
            model=f"{provider}-leak", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            events = list(stream)
            message = stream.get_final_message()
    assert message.content[0].text == EXPECTED  # type: ignore[union-attr]
    _clean(repr(events))
    _clean(LOG_PATH.read_text())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_secret_streamed_in_responses_is_redacted(gateway, provider):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        with client.responses.stream(model=f"{provider}-leak", input="hi") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert "".join(deltas) == EXPECTED
        assert final.output_text == EXPECTED
        stored = client.responses.retrieve(final.id)  # and what was stored of it
    _clean(stored.model_dump_json())
    _clean(LOG_PATH.read_text())


def test_an_error_event_quoting_the_key_is_redacted_on_every_api(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        with pytest.raises(openai.APIError) as chat_error:
            list(
                client.chat.completions.create(
                    model="openai-compatible-leak-error",
                    stream=True,
                    messages=[{"role": "user", "content": "hi"}],
                )
            )
        _clean(str(chat_error.value.body) + chat_error.value.message)
        assert "[redacted]" in chat_error.value.message
        with client.responses.create(model="openai-leak-error", input="hi", stream=True) as stream:
            errors = [e for e in stream if e.type == "error"]
        assert len(errors) == 1 and "[redacted]" in errors[0].message
        _clean(errors[0].model_dump_json())
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as claude:
        for model in ("anthropic-leak-error", "openai-compatible-leak-error"):
            with (
                pytest.raises(anthropic.APIStatusError) as messages_error,
                claude.messages.stream(
                    model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
                ) as stream,
            ):
                list(stream)
            _clean(str(messages_error.value.body) + messages_error.value.message)
    _clean(LOG_PATH.read_text())


def test_a_secret_in_a_whole_answer_is_redacted_on_every_api(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        for provider in ("openai-compatible", "anthropic", "openai"):
            chat = client.chat.completions.create(
                model=f"{provider}-leak", messages=[{"role": "user", "content": "hi"}]
            )
            assert (
                chat.choices[0].message.content
                == f"{leaky_upstream.PREFIX}[redacted] and again {UPSTREAM_KEY[:2]}"
            )
        for provider in ("openai", "openai-compatible"):
            response = client.responses.create(model=f"{provider}-leak", input="hi")
            assert "[redacted]" in response.output_text
            _clean(response.model_dump_json())
            _clean(client.responses.retrieve(response.id).model_dump_json())
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as claude:
        for provider in ("anthropic", "openai-compatible"):
            message = claude.messages.create(
                model=f"{provider}-leak", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
            assert "[redacted]" in message.content[0].text  # type: ignore[union-attr]
            _clean(message.model_dump_json())
    _clean(LOG_PATH.read_text())
