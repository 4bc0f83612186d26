"""A stream that breaks off after some of it reached the client is in the ledger once, at the prompt (the
upstream's count where it sent one, else the estimate) and the tokens of what was relayed, at the
deployment's price, status 502: on every path (chat pass-through, native ``/v1/responses`` and
``/v1/messages``, a translated ``/v1/messages``), on the memory store and on Redis. Real clients (openai,
anthropic SDKs) against fakes on loopback that cut their streams midway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from backends import Endpoint
from gateway.auth import hash_key
from policies import tokens
from tests.conftest import KEY, UPSTREAM_KEY
from tests.fakes import anthropic_upstream
from tests.fakes.chaos_upstream import ChaosState, Fault
from tests.fakes.chaos_upstream import build_app as build_chaos
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread
from tests.policies.conftest import ADMIN_KEY, settled, usage

PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens
TOKENIZED = "gpt-4o-mini"  # a model whose tokenizer the gateway knows (o200k_base)
QUESTION = "one two three four five six"
ACCENTED = "ééééééé two three"  # 4 tokens by characters, 9 by o200k_base


@pytest.fixture
def chaos() -> Iterator[tuple[ServerThread, ChaosState]]:
    tokens.encoding_for(TOKENIZED)  # loaded here once, not on the gateway's loop at its start
    state = ChaosState(faults={TOKENIZED: Fault("cut_stream")})
    server = ServerThread(lambda: build_chaos(state)).start()
    yield server, state
    server.stop()


@pytest.fixture
def claude_fake() -> Iterator[tuple[ServerThread, FakeState]]:
    state = FakeState(api_key=UPSTREAM_KEY)
    server = ServerThread(lambda: anthropic_upstream.build_app(state)).start()
    yield server, state
    server.stop()


def _deployment(provider: str, model: str, url: str) -> str:
    # The gateway loads a tokenizer only where counts need one: a stream that may come without its usage.
    usage = "\n        stream_usage: false" if model == TOKENIZED else ""
    return f"""      - provider: {provider}
        model: {model}
        api_base: {url}/v1
        api_key: {UPSTREAM_KEY}
        price: {json.dumps(PRICE)}{usage}"""


@pytest.fixture
def broken_gateway(upstream, chaos, claude_fake, start_gateway, stores_yaml) -> ServerThread:
    aliases = {
        "chat-cut": ("openai-compatible", "cut-stream", upstream[0].url),
        "native-cut": ("openai", "cut-stream", upstream[0].url),
        "claude-cut": ("anthropic", "cut-stream", claude_fake[0].url),
        "claude-error": ("anthropic", "stream-error", claude_fake[0].url),
        "tokenized-cut": ("openai-compatible", TOKENIZED, chaos[0].url),
    }
    models = "\n".join(
        f"  - name: {alias}\n    deployments:\n{_deployment(*where)}" for alias, where in aliases.items()
    )
    return start_gateway(f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
stores:
  sweep_interval_s: 60
{stores_yaml}
models:
{models}
tenants:
  - name: acme
    keys: ["{hash_key(KEY)}"]
""")


def _only_record(server: ServerThread) -> dict[str, Any]:
    settled(server)
    records = usage(server, tenant="acme", group_by="request").json()["data"]
    assert len(records) == 1, records
    return records[0]


def _estimate(endpoint: Endpoint, body: dict[str, Any]) -> int:
    return asyncio.run(tokens.count_prompt(endpoint, body, None))


def _assert_priced(record: dict[str, Any], prompt: int, completion: int, status: int = 502) -> None:
    assert record["status"] == status
    assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, completion)
    assert record["cost_usd"] == pytest.approx((prompt * PRICE["input"] + completion * PRICE["output"]) / 1e6)


def _chat_stream(server: ServerThread, alias: str, question: str = QUESTION) -> str:
    """The text a chat stream brought before it failed (the SDK raises at the gateway's error event)."""
    text = []
    with (
        openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client,
        pytest.raises(openai.APIError),
    ):
        for chunk in client.chat.completions.create(
            model=alias, stream=True, messages=[{"role": "user", "content": question}]
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
    return "".join(text)


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_a_broken_chat_pass_through_is_ledgered_at_what_it_relayed(broken_gateway) -> None:
    relayed = _chat_stream(broken_gateway, "chat-cut")
    assert relayed == "Echo: one"  # the fake cut it after two words
    prompt = _estimate(Endpoint.CHAT, {"messages": [{"role": "user", "content": QUESTION}]})
    _assert_priced(_only_record(broken_gateway), prompt, tokens.count_text(relayed, None))


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_the_relayed_text_is_counted_with_the_deployments_tokenizer(broken_gateway) -> None:
    relayed = _chat_stream(broken_gateway, "tokenized-cut", ACCENTED)
    assert relayed == "Echo: ééééééé"
    encoding = tokens.encoding_for(TOKENIZED)
    prompt = asyncio.run(
        tokens.count_prompt(Endpoint.CHAT, {"messages": [{"role": "user", "content": ACCENTED}]}, encoding)
    )
    counted = tokens.count_text(relayed, encoding)
    assert counted == 9 != tokens.count_text(relayed, None)  # the tokenizer's count, not characters / 4
    _assert_priced(_only_record(broken_gateway), prompt, counted)


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_a_broken_native_responses_stream_is_ledgered_at_what_it_relayed(broken_gateway) -> None:
    text: list[str] = []
    errors: list[object] = []
    with openai.OpenAI(base_url=broken_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        try:
            for event in client.responses.create(model="native-cut", input=QUESTION, stream=True):
                if event.type == "response.output_text.delta":
                    text.append(event.delta)
                elif event.type == "error":
                    errors.append(event)
        except openai.APIError as exc:
            errors.append(exc)
    assert errors, "the client learns that the stream failed"
    relayed = "".join(text)
    assert relayed == "Echo: one"
    prompt = _estimate(Endpoint.RESPONSES, {"input": QUESTION})
    _assert_priced(_only_record(broken_gateway), prompt, tokens.count_text(relayed, None))


def _claude_stream(server: ServerThread, alias: str) -> str:
    text: list[str] = []
    with (
        anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=20) as claude,
        pytest.raises(anthropic.APIStatusError),
        claude.messages.stream(
            model=alias, max_tokens=50, messages=[{"role": "user", "content": QUESTION}]
        ) as stream,
    ):
        for piece in stream.text_stream:
            text.append(piece)
    return "".join(text)


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
@pytest.mark.parametrize(
    ("alias", "expected", "status"), [("claude-cut", "Echo: one", 502), ("claude-error", "Echo:", 529)]
)  # the error event's own status: overloaded_error
def test_a_broken_native_messages_stream_takes_the_upstreams_prompt_count(
    broken_gateway, claude_fake, alias: str, expected: str, status: int
) -> None:
    relayed = _claude_stream(broken_gateway, alias)
    assert relayed == expected
    sent = claude_fake[1].usage_sent  # message_start's input tokens (and cache reads and writes)
    assert sent is not None
    _assert_priced(
        _only_record(broken_gateway), sent["prompt_tokens"], tokens.count_text(relayed, None), status
    )


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_a_broken_translated_messages_stream_is_ledgered_the_same_way(broken_gateway) -> None:
    relayed = _claude_stream(broken_gateway, "chat-cut")
    assert relayed == "Echo: one"
    prompt = _estimate(Endpoint.CHAT, {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 50})
    _assert_priced(_only_record(broken_gateway), prompt, tokens.count_text(relayed, None))
