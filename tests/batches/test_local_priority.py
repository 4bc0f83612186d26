"""Batch lines routed to the local engine (``provider: local``) go at the engine's lower priority, so that it
admits live requests first; lines for any other provider are sent as the client wrote them."""

from __future__ import annotations

import pytest

from local_engine.openai_api import OpenAIError, sampling_params_from_request

from .conftest import alias, chat_line, jsonl, upload, wait_for


@pytest.fixture
def client(upstream, client_with):
    # the engine served over HTTP (python -m local_engine serve); here the fake stands in for it on the wire
    return client_with(alias("engine", "local", "fake-model", f"{upstream[0].url}/v1"))


def test_batch_lines_reach_the_engine_after_live_requests(client, upstream):
    client.chat.completions.create(model="engine", messages=[{"role": "user", "content": "live"}])
    lines = [chat_line("e1", "to the engine", "engine"), chat_line("c1", "to another provider", "chat")]
    done = wait_for(
        client,
        client.batches.create(
            input_file_id=upload(client, jsonl(lines)),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id,
    )
    assert done.request_counts.completed == 2
    sent = {
        s.body["messages"][-1]["content"]: s.body
        for s in upstream[1].requests
        if s.path == "/v1/chat/completions"
    }
    assert sent.keys() == {"live", "to the engine", "to another provider"}
    assert sent["to the engine"]["priority"] == 1
    assert "priority" not in sent["live"] and "priority" not in sent["to another provider"]


def test_the_engine_reads_a_requests_priority():
    asked = {"messages": [{"role": "user", "content": "x"}]}
    assert sampling_params_from_request(asked, chat=True).priority == 0
    assert sampling_params_from_request({**asked, "priority": 1}, chat=True).priority == 1
    with pytest.raises(OpenAIError, match="priority"):
        sampling_params_from_request({**asked, "priority": "high"}, chat=True)
