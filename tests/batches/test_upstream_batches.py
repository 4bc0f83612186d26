"""``batch.mode: upstream``: a batch forwarded to the provider's own batch API (the fakes speak OpenAI's Files
and Batch APIs and Anthropic's Message Batches API), looked at by the gateway's clock, its results rewritten
into the gateway's output lines and ledgered at the batch price."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import KEY, UPSTREAM_KEY, config_text

from .conftest import DEADLINE_S, chat_line, jsonl, read_lines, upload, wait_for

POLL_S = 60


def _sections(files_dir: str) -> str:
    return f"""files:
  dir: {files_dir}
batches:
  poll_s: 0.05
  upstream_poll_s: {POLL_S}
"""


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _batch_row(url: str, requests: int) -> dict:
    """The tenant's batch usage once ``requests`` lines are ledgered (off the answer's path)."""
    found: list[dict] = []

    def ledgered() -> bool:
        rows = httpx.get(
            url + "/admin/usage", params={"group_by": "source"}, headers={"Authorization": f"Bearer {KEY}"}
        ).json()["data"]
        found[:] = [r for r in rows if r["source"] == "batch" and r["requests"] == requests]
        return bool(found)

    _until(ledgered, "the lines were not ledgered")
    return found[0]


def _ended(client, batch_id: str):
    deadline = time.monotonic() + DEADLINE_S
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, batch.request_counts
        time.sleep(0.02)
    return batch


@pytest.fixture
def gateway(upstream, start_gateway, tmp_path, clock):
    models = f"""  - name: forwarded
    batch: {{mode: upstream}}
    deployments:
      - provider: openai
        model: flaky
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}
        price: {{input: 2.0, output: 8.0}}"""
    return start_gateway(
        config_text(upstream[0].url, models, server=_sections(str(tmp_path / "files"))), clock=clock
    )


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def _retrieves(state, prefix: str = "/v1") -> int:
    return sum(
        1
        for s in state.requests
        if s.path.startswith(f"{prefix}/batches/") and not s.path.endswith("/cancel")
    )


def test_a_batch_goes_to_openais_batch_api_and_comes_back_as_the_gateways(client, gateway, upstream, clock):
    state = upstream[1]
    lines = [chat_line(f"r{i}", f"hello {i}", model="forwarded") for i in range(4)]
    lines.insert(2, chat_line("bad", "FAIL now", model="forwarded"))
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/chat/completions", completion_window="24h"
    )
    _until(lambda: len(state.batches) == 1, "the batch was not forwarded")
    [forwarded] = state.batches.values()
    # the upstream got the lines with its own model name, under its own key
    assert [line["custom_id"] for line in forwarded["lines"]] == ["r0", "r1", "bad", "r2", "r3"]
    assert {line["body"]["model"] for line in forwarded["lines"]} == {"flaky"}
    assert forwarded["endpoint"] == "/v1/chat/completions"
    upload_seen = next(s for s in state.requests if s.path == "/v1/files")
    assert (
        upload_seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        and upload_seen.body["purpose"] == "batch"
    )
    assert client.batches.retrieve(batch.id).status == "in_progress"

    # looked at upstream only when the gateway's clock says so: one step of the fake's batch per look
    for looks in range(1, 4):
        clock.advance(POLL_S)

        def looked(n: int = looks) -> bool:
            return _retrieves(state) == n

        _until(looked, f"look {looks} did not happen")
    done = wait_for(client, batch.id)
    assert (
        _retrieves(state) == 3
    )  # the runner looked for work many times meanwhile; upstream only on the clock
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 4, 1)
    output, errors = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    assert [o["custom_id"] for o in output] == ["r0", "r1", "r2", "r3"]
    upstream_ids = {
        orjson.loads(line)["id"]
        for f in state.files.values()
        if f["purpose"] == "batch_output"
        for line in f["data"].splitlines()
    }
    for i, line in enumerate(output):
        body = line["response"]["body"]
        assert body["model"] == "forwarded"  # the alias, not the deployment's model
        assert body["choices"][0]["message"]["content"].endswith(f"hello {i}")
        assert line["id"].startswith("batch_req_") and line["id"] not in upstream_ids
        assert line["response"]["request_id"].startswith("req_")
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("bad", 500)]
    # nothing ran through the gateway's own pipeline
    assert not [s for s in state.requests if s.path == "/v1/chat/completions"]

    # each line ledgered at the batch price, apart from live traffic
    row = _batch_row(gateway.url, 5)
    assert row["errors"] == 1
    usage = [o["response"]["body"]["usage"] for o in output]
    assert row["prompt_tokens"] == sum(u["prompt_tokens"] for u in usage)
    assert row["completion_tokens"] == sum(u["completion_tokens"] for u in usage)
    full = (row["prompt_tokens"] * 2.0 + row["completion_tokens"] * 8.0) / 1e6
    assert row["cost_usd"] == pytest.approx(full / 2)


def test_a_cancel_is_passed_upstream(client, upstream, clock):
    state = upstream[1]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line(f"r{i}", "x", "forwarded") for i in range(3)])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    _until(lambda: len(state.batches) == 1, "the batch was not forwarded")
    assert client.batches.cancel(batch.id).status == "cancelling"
    clock.advance(POLL_S)
    done = wait_for(client, batch.id)
    assert done.status == "cancelled"
    [forwarded] = state.batches.values()
    assert forwarded["status"] == "cancelled"
    assert [s.path for s in state.requests if s.path.endswith("/cancel")] == [
        f"/v1/batches/{forwarded['id']}/cancel"
    ]
    not_run = read_lines(client, done.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in not_run] == [
        (f"r{i}", "batch_cancelled") for i in range(3)
    ]


def test_a_batch_goes_to_azures_batch_api_in_azures_form(upstream, start_gateway, tmp_path, clock):
    models = f"""  - name: on-azure
    batch: {{mode: upstream}}
    deployments:
      - provider: azure
        model: my-global-batch
        api_base: {upstream[0].url}
        api_key: {UPSTREAM_KEY}
        api_version: "2024-06-01"  # date-ok: an Azure api-version older than the batch API's
        price: {{input: 2.0, output: 8.0}}"""
    gateway = start_gateway(
        config_text(upstream[0].url, models, server=_sections(str(tmp_path / "files"))), clock=clock
    )
    state = upstream[1]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        batch = client.batches.create(
            input_file_id=upload(
                client, jsonl([chat_line(f"r{i}", f"hi {i}", "on-azure") for i in range(3)])
            ),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        _until(lambda: len(state.batches) == 1, "the batch was not forwarded")
        [forwarded] = state.batches.values()
        # Azure's paths, api-version (raised to the batch API's) and key header; endpoints without /v1
        upload_seen = next(s for s in state.requests if s.path == "/openai/files")
        assert upload_seen.query == {"api-version": "2024-10-21"}  # date-ok: Azure's batch api-version
        assert upload_seen.headers["api-key"] == UPSTREAM_KEY and "Authorization" not in upload_seen.headers
        assert forwarded["endpoint"] == "/chat/completions"
        assert {(line["url"], line["body"]["model"]) for line in forwarded["lines"]} == {
            ("/chat/completions", "my-global-batch")
        }
        for looks in range(1, 4):  # validating -> in_progress -> finalizing -> completed, one step a look
            clock.advance(POLL_S)

            def looked(n: int = looks) -> bool:
                return _retrieves(state, "/openai") == n

            _until(looked, f"look {looks} did not happen")
        done = wait_for(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 3
        output = read_lines(client, done.output_file_id)
    assert [o["custom_id"] for o in output] == ["r0", "r1", "r2"]
    assert {o["response"]["body"]["model"] for o in output} == {"on-azure"}
    assert all(s.path.startswith("/openai/") for s in state.requests)
    row = _batch_row(gateway.url, 3)
    full = (row["prompt_tokens"] * 2.0 + row["completion_tokens"] * 8.0) / 1e6
    assert row["prompt_tokens"] > 0 and row["cost_usd"] == pytest.approx(full / 2)


def test_a_batch_mixing_aliases_runs_in_the_gateway(client, upstream):
    lines = [chat_line("a", "one", "forwarded"), chat_line("b", "two", "chat")]
    done = wait_for(
        client,
        client.batches.create(
            input_file_id=upload(client, jsonl(lines)),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id,
    )
    assert done.status == "completed" and done.request_counts.completed == 2
    assert upstream[1].batches == {}
    assert len([s for s in upstream[1].requests if s.path == "/v1/chat/completions"]) == 2


def test_upstream_mode_needs_a_provider_with_a_batch_api(upstream, start_gateway, tmp_path):
    from gateway.config import ConfigError

    models = f"""  - name: nowhere
    batch: {{mode: upstream}}
    deployments:
      - provider: openai-compatible
        model: m
        api_base: {upstream[0].url}/v1"""
    with pytest.raises(ConfigError, match=r"batch\.mode upstream"):
        start_gateway(config_text(upstream[0].url, models, server=_sections(str(tmp_path))))


@pytest.fixture
def claude_upstream():
    from tests.fakes import anthropic_upstream
    from tests.fakes.openai_upstream import FakeState
    from tests.harness import ServerThread

    state = FakeState(api_key=UPSTREAM_KEY)
    server = ServerThread(lambda: anthropic_upstream.build_app(state)).start()
    yield server, state
    server.stop()


@pytest.fixture
def claude(upstream, claude_upstream, start_gateway, tmp_path, clock):
    import anthropic

    models = f"""  - name: claude-forwarded
    batch: {{mode: upstream}}
    deployments:
      - provider: anthropic
        model: claude-fake
        api_base: {claude_upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}
        price: {{input: 3.0, output: 15.0}}"""
    gw = start_gateway(
        config_text(upstream[0].url, models, server=_sections(str(tmp_path / "files"))), clock=clock
    )
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0, timeout=20) as c:
        yield c, gw


def _request(custom_id: str, text: str, model: str = "claude-forwarded", **params: Any) -> Any:
    return {
        "custom_id": custom_id,
        "params": {
            "model": model,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": text}],
            **params,
        },
    }


def _looks(state) -> int:
    return sum(
        1
        for s in state.requests
        if s.path.startswith("/v1/messages/batches/") and not s.path.endswith(("/cancel", "/results"))
    )


def test_a_message_batch_goes_to_anthropics_batch_api(claude, claude_upstream, clock):
    client, gw = claude
    state = claude_upstream[1]
    batch = client.messages.batches.create(requests=[_request(c, f"hello {c}") for c in ("a", "b", "c")])
    _until(lambda: len(state.batches) == 1, "the batch was not forwarded")
    [forwarded] = state.batches.values()
    assert [(r["custom_id"], r["params"]["model"]) for r in forwarded["requests"]] == [
        ("a", "claude-fake"),
        ("b", "claude-fake"),
        ("c", "claude-fake"),
    ]
    create_seen = next(s for s in state.requests if s.path == "/v1/messages/batches")
    assert create_seen.headers["x-api-key"] == UPSTREAM_KEY and create_seen.headers["anthropic-version"]
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    assert _looks(state) == 0  # not before the gateway's clock says so
    clock.advance(POLL_S)
    done = _ended(client, batch.id)
    assert _looks(state) == 1
    assert (done.request_counts.succeeded, done.request_counts.errored) == (3, 0)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert sorted(results) == ["a", "b", "c"]
    for custom_id, result in results.items():
        assert result.type == "succeeded"
        assert result.message.model == "claude-forwarded"
        assert result.message.content[0].text.endswith(f"hello {custom_id}")
    assert not [s for s in state.requests if s.path == "/v1/messages"]  # nothing ran in the gateway

    row = _batch_row(gw.url, 3)
    assert row["completion_tokens"] > 0
    full = (row["prompt_tokens"] * 3.0 + row["completion_tokens"] * 15.0) / 1e6
    assert row["cost_usd"] == pytest.approx(full / 2)


def test_a_message_batch_cancel_is_passed_upstream(claude, claude_upstream, clock):
    client, _ = claude
    state = claude_upstream[1]
    batch = client.messages.batches.create(requests=[_request(c, "x") for c in ("a", "b")])
    _until(lambda: len(state.batches) == 1, "the batch was not forwarded")
    assert client.messages.batches.cancel(batch.id).processing_status == "canceling"
    clock.advance(POLL_S)
    done = _ended(client, batch.id)
    assert done.request_counts.canceled == 2
    assert [s.path.endswith("/cancel") for s in state.requests].count(True) == 1
    assert {r.result.type for r in client.messages.batches.results(batch.id)} == {"canceled"}


# --- across formats: a chat batch on Anthropic's batch API, a message batch on OpenAI's ----------------------


@pytest.fixture
def across(upstream, claude_upstream, start_gateway, tmp_path, clock):
    """``claude-chat``: Anthropic's batch API only; ``gpt-messages``: OpenAI's only; ``either``: Anthropic's
    deployment listed first, then OpenAI's."""
    claude = f"""      - provider: anthropic
        model: flaky
        api_base: {claude_upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}
        price: {{input: 3.0, output: 15.0}}"""
    gpt = f"""      - provider: openai
        model: flaky
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}
        price: {{input: 2.0, output: 8.0}}"""
    models = "\n".join(
        f"""  - name: {name}
    batch: {{mode: upstream}}
    deployments:
{deployments}"""
        for name, deployments in (
            ("claude-chat", claude),
            ("gpt-messages", gpt),
            ("either", claude + "\n" + gpt),
        )
    )
    return start_gateway(
        config_text(upstream[0].url, models, server=_sections(str(tmp_path / "files"))), clock=clock
    )


def test_a_chat_batch_goes_to_anthropics_batch_api_translated(across, claude_upstream, clock):
    from tests.fakes.anthropic_upstream import CACHE_READ, CACHE_WRITE

    state = claude_upstream[1]
    lines = [chat_line(f"r{i}", f"hello {i}", "claude-chat") for i in range(3)]
    lines.insert(1, chat_line("bad", "FAIL now", "claude-chat"))
    two = chat_line("two", "twice", "claude-chat")
    two["body"]["n"] = 2  # one answer is all Anthropic gives: refused as a live request is, never sent
    lines.append(two)
    with openai.OpenAI(base_url=across.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        batch = client.batches.create(
            input_file_id=upload(client, jsonl(lines)),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        _until(lambda: len(state.batches) == 1, "the batch was not forwarded")
        [forwarded] = state.batches.values()
        # each line as a Messages request, under its custom_id, with the deployment's model
        assert [r["custom_id"] for r in forwarded["requests"]] == ["r0", "bad", "r1", "r2"]
        assert forwarded["requests"][0]["params"] == {
            "model": "flaky",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello 0"}]}],
        }
        clock.advance(POLL_S)
        done = wait_for(client, batch.id)
        assert done.status == "completed"
        counts = done.request_counts
        assert (counts.total, counts.completed, counts.failed) == (5, 3, 2)
        output, errors = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    assert [o["custom_id"] for o in output] == ["r0", "r1", "r2"]
    for i, line in enumerate(output):
        body = line["response"]["body"]
        assert (body["object"], body["model"]) == ("chat.completion", "claude-chat")
        assert body["choices"][0]["message"]["content"].endswith(f"hello {i}")
        assert body["choices"][0]["finish_reason"] == "stop"
        # Anthropic's input tokens leave the cache's out; chat's prompt tokens count them
        assert body["usage"]["prompt_tokens_details"] == {
            "cached_tokens": CACHE_READ,
            "cache_creation_tokens": CACHE_WRITE,
        }
        assert body["usage"]["prompt_tokens"] > CACHE_READ + CACHE_WRITE
    # in OpenAI's error shape, with the status the live path gives
    assert [
        (e["custom_id"], e["response"]["status_code"], e["response"]["body"]["error"]["type"]) for e in errors
    ] == [("bad", 500, "server_error"), ("two", 400, "invalid_request_error")]
    assert "'n' greater than 1" in errors[1]["response"]["body"]["error"]["message"]
    assert not [s for s in state.requests if s.path == "/v1/messages"]  # nothing ran in the gateway

    row = _batch_row(across.url, 5)
    usage = [o["response"]["body"]["usage"] for o in output]
    assert row["errors"] == 2
    assert row["prompt_tokens"] == sum(u["prompt_tokens"] for u in usage)
    assert row["completion_tokens"] == sum(u["completion_tokens"] for u in usage) > 0
    assert (row["cached_tokens"], row["cache_write_tokens"]) == (3 * CACHE_READ, 3 * CACHE_WRITE)
    full = (row["prompt_tokens"] * 3.0 + row["completion_tokens"] * 15.0) / 1e6
    assert row["cost_usd"] == pytest.approx(full / 2)


def test_a_message_batch_goes_to_openais_batch_api_translated(across, upstream, clock):
    import anthropic

    state = upstream[1]
    requests = [
        _request(
            c,
            "FAIL now" if c == "bad" else f"hello {c}",
            "gpt-messages",
            system="Be brief.",
            stop_sequences=["STOP"],
        )
        for c in ("a", "bad", "b")
    ]
    with anthropic.Anthropic(base_url=across.url, api_key=KEY, max_retries=0, timeout=20) as client:
        batch = client.messages.batches.create(requests=requests)
        _until(lambda: len(state.batches) == 1, "the batch was not forwarded")
        [forwarded] = state.batches.values()
        # each request as a chat line, under its custom_id, with the deployment's model
        assert forwarded["endpoint"] == "/v1/chat/completions"
        assert [(line["custom_id"], line["url"]) for line in forwarded["lines"]] == [
            (c, "/v1/chat/completions") for c in ("a", "bad", "b")
        ]
        assert forwarded["lines"][0]["body"] == {
            "model": "flaky",
            "max_tokens": 32,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello a"}],
            "stop": ["STOP"],
        }
        for looks in range(1, 4):  # validating -> in_progress -> finalizing -> completed, one step a look
            clock.advance(POLL_S)

            def looked(n: int = looks) -> bool:
                return _retrieves(state) == n

            _until(looked, f"look {looks} did not happen")
        done = _ended(client, batch.id)
        assert (done.request_counts.succeeded, done.request_counts.errored) == (2, 1)
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert sorted(results) == ["a", "b", "bad"]
    messages = [results[c].message for c in ("a", "b")]  # type: ignore[union-attr]
    for custom_id, message in zip(("a", "b"), messages, strict=True):
        assert (message.model, message.stop_reason) == ("gpt-messages", "end_turn")
        assert message.content[0].text.endswith(f"hello {custom_id}")  # type: ignore[union-attr]
    failed = results["bad"]
    assert failed.type == "errored"
    assert failed.error.error.type == "api_error"

    row = _batch_row(across.url, 3)
    assert row["errors"] == 1
    assert row["prompt_tokens"] == sum(m.usage.input_tokens for m in messages) > 0
    assert row["completion_tokens"] == sum(m.usage.output_tokens for m in messages) > 0
    full = (row["prompt_tokens"] * 2.0 + row["completion_tokens"] * 8.0) / 1e6
    assert row["cost_usd"] == pytest.approx(full / 2)


def test_a_batch_goes_to_a_batch_api_of_its_own_format_first(across, upstream, claude_upstream):
    import anthropic

    with openai.OpenAI(base_url=across.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        client.batches.create(
            input_file_id=upload(client, jsonl([chat_line("r", "hi", "either")])),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    with anthropic.Anthropic(base_url=across.url, api_key=KEY, max_retries=0, timeout=20) as client:
        client.messages.batches.create(requests=[_request("m", "hi", "either")])
    _until(lambda: len(upstream[1].batches) == 1, "the chat batch did not go to OpenAI's batch API")
    _until(lambda: len(claude_upstream[1].batches) == 1, "the message batch did not go to Anthropic's")
    [chat] = upstream[1].batches.values()
    [messages] = claude_upstream[1].batches.values()
    assert [(line["custom_id"], line["url"]) for line in chat["lines"]] == [("r", "/v1/chat/completions")]
    assert [(r["custom_id"], r["params"]["messages"]) for r in messages["requests"]] == [
        ("m", [{"role": "user", "content": "hi"}])
    ]


def test_a_batch_no_batch_api_of_its_alias_takes_is_refused(across, claude_upstream):
    line = {
        "custom_id": "e",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "claude-chat", "input": "hello"},
    }
    with openai.OpenAI(base_url=across.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        batch = client.batches.create(
            input_file_id=upload(client, jsonl([line])), endpoint="/v1/embeddings", completion_window="24h"
        )
        done = wait_for(client, batch.id)
    assert done.status == "failed"
    [error] = done.errors.data
    assert error.code == "unsupported_endpoint" and "/v1/embeddings" in (error.message or "")
    assert claude_upstream[1].batches == {}


def test_a_batch_whose_every_line_is_refused_goes_nowhere(across, claude_upstream):
    lines = [chat_line(c, "twice", "claude-chat") for c in ("a", "b")]
    for line in lines:
        line["body"]["n"] = 2
    with openai.OpenAI(base_url=across.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        batch = client.batches.create(
            input_file_id=upload(client, jsonl(lines)),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        done = wait_for(client, batch.id)  # no look upstream: the clock does not move
        assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 0, 2)
        errors = read_lines(client, done.error_file_id)
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("a", 400), ("b", 400)]
    assert claude_upstream[1].batches == {} and claude_upstream[1].requests == []
