"""A batch line kept waiting past the request's deadline is not a 504 in the error file: it is tried again
later, until the batch's completion window ends (the gateway's clock), when it is reported expired as OpenAI
reports it. The deadline itself is the event loop's (``asyncio.timeout_at``): set short here."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from tests.conftest import KEY, UPSTREAM_KEY, config_text

from .conftest import (
    DEADLINE_S,
    batch_records,
    batch_sections,
    chat_line,
    jsonl,
    read_lines,
    upload,
    wait_for,
)

WINDOW_S = 24 * 3600


@pytest.fixture
def gateway(upstream, start_gateway, tmp_path, clock):
    hanging = f"""  - name: hanging
    retry: {{attempts: 1}}
    deployments:
      - {{provider: openai-compatible, model: hang, api_base: "{upstream[0].url}/v1", api_key: {UPSTREAM_KEY}}}"""
    server = batch_sections(str(tmp_path / "files")) + "resilience:\n  deadline_s: 0.3\n"
    return start_gateway(config_text(upstream[0].url, hanging, server=server), clock=clock)


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def _statuses(url: str, count: int) -> list[int]:
    """The ledger's statuses of batch records, once ``count`` are in."""
    records = batch_records(url, count)
    assert all(r["completion_tokens"] == 0 for r in records if r["status"] != 200)
    return sorted(r["status"] for r in records)


def _tries(state, content: str) -> int:
    return sum(
        1
        for s in list(state.requests)
        if s.path == "/v1/chat/completions" and s.body["messages"][-1]["content"] == content
    )


def _wait_tries(state, content: str, count: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while _tries(state, content) < count:
        assert time.monotonic() < deadline, f"{content!r} sent {_tries(state, content)} times"
        time.sleep(0.02)


def _create(client: openai.OpenAI, lines: list[dict]) -> str:
    return client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def test_a_line_past_its_deadline_is_tried_again_and_answered(client, gateway, upstream):
    state = upstream[1]
    state.hold_requests = threading.Event()  # the upstream keeps every request until set
    batch_id = _create(client, [chat_line("held", "held line")])
    _wait_tries(state, "held line", 3)  # three deadlines passed: each time tried again, not failed
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "in_progress"
    assert batch.request_counts is not None and batch.request_counts.failed == 0
    state.hold_requests.set()
    done = wait_for(client, batch_id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 0)
    assert done.error_file_id is None
    [out] = read_lines(client, done.output_file_id)
    assert out["custom_id"] == "held"
    assert out["response"]["status_code"] == 200
    tries = _tries(state, "held line")
    assert _statuses(gateway.url, tries) == [200] + [504] * (tries - 1)  # each try ledgered, one answered


def test_a_line_starved_until_the_window_ends_is_reported_expired(client, upstream, clock):
    state = upstream[1]
    batch_id = _create(
        client, [chat_line("fine", "answered at once"), chat_line("starved", "never answered", "hanging")]
    )
    _wait_tries(state, "never answered", 2)
    assert client.batches.retrieve(batch_id).status == "in_progress"
    clock.advance(WINDOW_S + 1)
    done = wait_for(client, batch_id)
    assert done.status == "expired"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == ["fine"]
    [error] = read_lines(client, done.error_file_id)
    assert error["custom_id"] == "starved"
    assert error["response"] is None
    assert error["error"]["code"] == "batch_expired"
