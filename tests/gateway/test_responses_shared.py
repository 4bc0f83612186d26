"""Stored responses live in the store layer: two real gateway processes on one redis-server serve one
conversation, whichever process each request reaches (create on one, retrieve, continue with
``previous_response_id``, list input items and delete on the other)."""

from __future__ import annotations

import signal

import openai
import pytest

from tests.conftest import KEY, OTHER_KEY
from tests.gateway.test_server import start_serve_with
from tests.policies.conftest import policy_config


@pytest.fixture
def two_processes(tmp_path, upstream, redis_server):
    config = tmp_path / "config.yaml"
    config.write_text(policy_config(upstream[0].url, stores=f"  redis_url: {redis_server.url}"))
    started = [start_serve_with(config, {}, stdout=tmp_path / f"gateway{i}.log") for i in range(2)]
    yield [url for _, url in started]
    for process, _ in started:
        process.send_signal(signal.SIGTERM)
    for process, _ in started:
        process.wait(timeout=30)


def test_a_conversation_continues_on_another_process(two_processes, upstream):
    first, second = (
        openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=20) for url in two_processes
    )
    with first, second:
        one = first.responses.create(model="chat", input="remember the word teal")
        assert second.responses.retrieve(one.id).output_text == one.output_text
        two = second.responses.create(model="chat", input="which word?", previous_response_id=one.id)
        assert two.output_text == "Echo: which word?"
        seen = [m["content"] for m in upstream[1].requests[-1].body["messages"]]
        assert seen == ["remember the word teal", one.output_text, "which word?"]
        # the continuation's input items are this turn's; the stored context reaches the upstream
        items = first.responses.input_items.list(two.id)
        assert [item.content[0].text for item in items.data] == ["which word?"]  # type: ignore[index, union-attr]
        assert first.responses.delete(one.id) is None  # type: ignore[func-returns-value]
        with pytest.raises(openai.NotFoundError):
            second.responses.retrieve(one.id)
        with pytest.raises(openai.NotFoundError):
            second.responses.create(model="chat", input="again", previous_response_id=one.id)
    with openai.OpenAI(
        base_url=two_processes[1] + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=20
    ) as other:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(two.id)
