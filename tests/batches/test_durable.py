"""A batch survives its gateway: SIGKILLed mid-batch (a real process, a real redis-server) and restarted with
two workers, it finishes with each line answered upstream exactly once and every line in the output."""

from __future__ import annotations

import signal
import threading

import openai

from tests.conftest import KEY, config_text
from tests.gateway.test_server import start_serve_with
from tests.redis_server import RedisServer

from .conftest import batch_sections, chat_line, jsonl, read_lines, upload, wait_for

LINES = 300
ANSWERED_BEFORE_KILL = 100


def test_killed_mid_batch_resumes_and_sends_each_line_once(tmp_path, upstream):
    fake = upstream[1]
    fake.record = False
    fake.hold_requests, fake.hold_after_answers = threading.Event(), ANSWERED_BEFORE_KILL
    redis = RedisServer()
    config = tmp_path / "config.yaml"
    sections = batch_sections(str(tmp_path / "files"), concurrency=4).replace("lease_s: 30", "lease_s: 2")
    config.write_text(config_text(upstream[0].url, server=sections + f"stores:\n  redis_url: {redis.url}\n"))
    process, url = start_serve_with(config, {}, stdout=tmp_path / "first.log")
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
            lines = [chat_line(f"r{i}", f"line {i}") for i in range(LINES)]
            batch = client.batches.create(
                input_file_id=upload(client, jsonl(lines)),
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            # the upstream answered 100 lines and holds the next ones: once the gateway recorded those 100,
            # it is killed with lines in flight
            wait_for(client, batch.id, lambda b: b.request_counts.completed == ANSWERED_BEFORE_KILL)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert sum(fake.answered.values()) == ANSWERED_BEFORE_KILL
    fake.hold_requests.set()
    process, url = start_serve_with(config, {}, workers=2, stdout=tmp_path / "second.log")
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
            done = wait_for(client, batch.id, deadline_s=90)
            assert done.status == "completed"
            assert (done.request_counts.total, done.request_counts.completed) == (LINES, LINES)
            output = read_lines(client, done.output_file_id)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        redis.stop()
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(LINES)]
    assert fake.answered == {f"line {i}": 1 for i in range(LINES)}  # each line answered upstream once
