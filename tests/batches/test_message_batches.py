"""Anthropic's ``/v1/messages/batches`` through the anthropic SDK, in front of an OpenAI-format backend, on the
same runner as OpenAI's batches: create inline, retrieve, list, cancel, results."""

from __future__ import annotations

import threading
import time

import anthropic
import pytest

from tests.conftest import KEY, OTHER_KEY


@pytest.fixture
def claude(batch_gateway):
    with anthropic.Anthropic(base_url=batch_gateway.url, api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def _request(custom_id: str, text: str, model: str = "chat") -> dict:
    return {
        "custom_id": custom_id,
        "params": {"model": model, "max_tokens": 32, "messages": [{"role": "user", "content": text}]},
    }


def _ended(claude: anthropic.Anthropic, batch_id: str, deadline_s: float = 60):
    deadline = time.monotonic() + deadline_s
    while (batch := claude.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, batch.request_counts
        time.sleep(0.05)
    return batch


def test_create_retrieve_list_results(claude, batch_gateway):
    batch = claude.messages.batches.create(
        requests=[_request("a", "hello a"), _request("b", "hello b"), _request("c", "FAIL c", model="flaky")]
    )
    assert batch.id.startswith("msgbatch_") and batch.processing_status == "in_progress"
    done = _ended(claude, batch.id)
    assert (done.request_counts.succeeded, done.request_counts.errored) == (2, 1)
    assert done.ended_at is not None and done.results_url is not None
    results = {r.custom_id: r.result for r in claude.messages.batches.results(batch.id)}
    assert results["a"].type == "succeeded" and results["a"].message.content[0].text.endswith("hello a")
    assert results["a"].message.model == "chat" and results["a"].message.role == "assistant"
    assert results["b"].type == "succeeded"
    assert results["c"].type == "errored" and results["c"].error.error.type == "api_error"
    assert batch.id in [b.id for b in claude.messages.batches.list()]
    with anthropic.Anthropic(base_url=batch_gateway.url, api_key=OTHER_KEY, max_retries=0) as other:
        with pytest.raises(anthropic.NotFoundError):
            other.messages.batches.retrieve(batch.id)


def test_bad_requests_are_refused_in_anthropics_format(claude):
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        claude.messages.batches.create(requests=[_request("a", "x"), _request("a", "y")])
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        claude.messages.batches.create(
            requests=[
                {
                    "custom_id": "a",
                    "params": {"model": "chat", "messages": [{"role": "user", "content": "x"}]},
                }
            ]
        )


def test_cancel(claude, upstream):
    upstream[1].hold_requests = threading.Event()
    try:
        batch = claude.messages.batches.create(requests=[_request(f"r{i}", f"x {i}") for i in range(100)])
        canceling = claude.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    finally:
        upstream[1].hold_requests.set()
    done = _ended(claude, batch.id)
    counts = done.request_counts
    assert counts.canceled > 0 and counts.succeeded + counts.canceled == 100
    kinds = [r.result.type for r in claude.messages.batches.results(batch.id)]
    assert len(kinds) == 100 and set(kinds) <= {"succeeded", "canceled"} and "canceled" in kinds
