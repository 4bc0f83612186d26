"""Batch lines routed to the local engine (``provider: local``) go at the engine's lower priority, so that it
admits live requests first; lines for any other provider are sent as the client wrote them."""

from __future__ import annotations

import openai
import pytest

from local_engine.openai_api import OpenAIError, sampling_params_from_request
from tests.conftest import KEY, UPSTREAM_KEY, config_text

from .conftest import batch_sections, chat_line, jsonl, upload, wait_for


@pytest.fixture
def client(upstream, start_gateway, tmp_path):
    # the engine served over HTTP (python -m local_engine serve); here the fake stands in for it on the wire
    local = f"""  - name: engine
    deployments:
      - provider: local
        model: fake-model
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}"""
    gateway = start_gateway(config_text(upstream[0].url, local, server=batch_sections(str(tmp_path / "files"))))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def test_batch_lines_reach_the_engine_after_live_requests(client, upstream):
    client.chat.completions.create(model="engine", messages=[{"role": "user", "content": "live"}])
    lines = [chat_line("e1", "to the engine", "engine"), chat_line("c1", "to another provider", "chat")]
    done = wait_for(client, client.batches.create(input_file_id=upload(client, jsonl(lines)),
                                                  endpoint="/v1/chat/completions", completion_window="24h").id)
    assert done.request_counts.completed == 2
    sent = {s.body["messages"][-1]["content"]: s.body for s in upstream[1].requests
            if s.path == "/v1/chat/completions"}
    assert sent.keys() == {"live", "to the engine", "to another provider"}
    assert sent["to the engine"]["priority"] == 1
    assert "priority" not in sent["live"] and "priority" not in sent["to another provider"]


def test_the_engine_reads_a_requests_priority():
    asked = {"messages": [{"role": "user", "content": "x"}]}
    assert sampling_params_from_request(asked, chat=True).priority == 0
    assert sampling_params_from_request({**asked, "priority": 1}, chat=True).priority == 1
    with pytest.raises(OpenAIError, match="priority"):
        sampling_params_from_request({**asked, "priority": "high"}, chat=True)
