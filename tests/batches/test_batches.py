"""``/v1/batches`` through the openai SDK: create, retrieve, list, cancel; output and error files in OpenAI's
line format; validation errors per line; a 2,000-line batch against an upstream failing 10% of lines."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from tests.conftest import OTHER_KEY

from .conftest import chat_line, jsonl, read_lines, upload, wait_for


def test_a_batch_runs_to_completion(client, upstream):
    lines = [chat_line(f"req-{i}", f"hello {i}") for i in range(5)]
    lines.append(
        {
            "custom_id": "emb",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "flaky", "messages": [{"role": "user", "content": "FAIL please"}]},
        }
    )
    file_id = upload(client, jsonl(lines))
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
    assert batch.input_file_id == file_id and batch.completion_window == "24h"
    done = wait_for(client, batch.id)
    assert done.status == "completed", done.errors
    assert (
        done.request_counts.total == 6
        and done.request_counts.completed == 5
        and done.request_counts.failed == 1
    )
    assert (
        done.in_progress_at is not None and done.finalizing_at is not None and done.completed_at is not None
    )
    output = read_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(5)]  # in the input's order
    for i, line in enumerate(output):
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"].endswith(f"hello {i}")
    errors = read_lines(client, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["emb"]
    assert errors[0]["response"]["status_code"] == 500 and "error" in errors[0]["response"]["body"]
    # every line was sent upstream at batch priority, once
    sent = [s for s in upstream[1].requests if s.path == "/v1/chat/completions"]
    assert len(sent) == 6
    assert done.id in [b.id for b in client.batches.list()]


def test_embeddings_batch(client):
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "embed", "input": f"text {i}"},
        }
        for i in range(3)
    ]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    output = read_lines(client, done.output_file_id)
    assert [o["response"]["body"]["object"] for o in output] == ["list"] * 3
    assert done.error_file_id is None


def test_validation_errors_fail_the_batch_per_line(client):
    lines = jsonl([chat_line("a", "x"), chat_line("a", "dup"), chat_line("b", "x", model="nope")])
    lines += b"not json\n" + jsonl([{**chat_line("c", "x"), "url": "/v1/embeddings"}])
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.errors is not None
    found = [(e.line, e.code) for e in done.errors.data]
    assert found == [
        (2, "duplicate_custom_id"),
        (3, "model_not_found"),
        (4, "invalid_json_line"),
        (5, "mismatched_endpoint"),
    ]


def test_bad_create_requests(client):
    file_id = upload(client, jsonl([chat_line("a", "x")]))
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=file_id, endpoint="/v1/moderations", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="1h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")


def test_another_tenant_cannot_see_or_cancel(client, batch_gateway):
    batch = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line("a", "x")])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    with openai.OpenAI(base_url=batch_gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            other.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            other.batches.cancel(batch.id)
        with pytest.raises(openai.NotFoundError):  # nor use its file
            other.batches.create(
                input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert batch.id not in [b.id for b in other.batches.list()]
    wait_for(client, batch.id)


def test_cancel_stops_a_running_batch(client, upstream):
    upstream[1].hold_requests = threading.Event()  # the upstream holds every request: the batch stays running
    try:
        lines = [chat_line(f"r{i}", f"x {i}") for i in range(200)]
        batch = client.batches.create(
            input_file_id=upload(client, jsonl(lines)),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        wait_for(client, batch.id, lambda b: b.status == "in_progress")
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    finally:
        upstream[1].hold_requests.set()
    done = wait_for(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    answered = read_lines(client, done.output_file_id)
    not_run = read_lines(client, done.error_file_id)
    assert len(answered) < 200 and len(answered) + len(not_run) == 200
    assert {e["error"]["code"] for e in not_run} == {"batch_cancelled"}
    assert len([s for s in upstream[1].requests if s.path == "/v1/chat/completions"]) == len(answered)
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)


def test_two_thousand_lines_with_ten_percent_failing(client, upstream):
    upstream[1].record = False
    lines = [
        chat_line(f"r{i}", f"FAIL {i}" if i % 10 == 0 else f"ok {i}", model="flaky") for i in range(2000)
    ]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client, batch.id, deadline_s=120)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
        2000,
        1800,
        200,
    )
    output, errors = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    assert {o["custom_id"] for o in output} | {e["custom_id"] for e in errors} == {
        f"r{i}" for i in range(2000)
    }
    assert {e["custom_id"] for e in errors} == {f"r{i}" for i in range(0, 2000, 10)}
    assert all(e["response"]["status_code"] == 500 for e in errors)
    assert sum(upstream[1].answered.values()) == 1800 and set(upstream[1].answered.values()) == {1}


def test_batch_lines_are_ledgered_at_the_batch_price(client, batch_gateway):
    import httpx

    from tests.conftest import KEY

    live = client.chat.completions.with_raw_response.create(
        model="flaky", messages=[{"role": "user", "content": "same words"}], max_tokens=16
    )
    live_id = live.headers["x-request-id"]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line("a", "same words", "flaky")])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_for(client, batch.id)
    line_id = read_lines(client, done.output_file_id)[0]["response"]["request_id"]

    def rows() -> dict[str, dict]:
        got = httpx.get(
            batch_gateway.url + "/admin/usage",
            params={"group_by": "request"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert got.status_code == 200, got.text
        return {row["request_id"]: row for row in got.json()["data"]}

    deadline = time.monotonic() + 20
    while not {live_id, line_id} <= rows().keys():  # settled off the answer's path
        assert time.monotonic() < deadline
        time.sleep(0.05)
    found = rows()
    assert found[live_id]["cost_usd"] > 0
    assert found[line_id]["cost_usd"] == pytest.approx(found[live_id]["cost_usd"] / 2)


def test_admins_list_every_tenants_batches(upstream, start_gateway, tmp_path):
    import httpx

    from gateway.auth import hash_key, new_key
    from tests.conftest import KEY, config_text

    from .conftest import batch_sections

    admin = new_key()
    sections = batch_sections(str(tmp_path / "files")) + f'admin:\n  keys: ["{hash_key(admin)}"]\n'
    gw = start_gateway(config_text(upstream[0].url, server=sections))
    made = {}
    for key in (KEY, OTHER_KEY):
        with openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as c:
            made[key] = c.batches.create(
                input_file_id=upload(c, jsonl([chat_line("a", "x")])),
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ).id
            wait_for(c, made[key])
    listed = httpx.get(gw.url + "/admin/batches", headers={"Authorization": f"Bearer {admin}"}).json()["data"]
    assert {(b["id"], b["tenant"]) for b in listed} == {(made[KEY], "acme"), (made[OTHER_KEY], "globex")}
    assert all(b["status"] == "completed" and b["kind"] == "openai" for b in listed)
    only = httpx.get(
        gw.url + "/admin/batches", params={"tenant": "globex"}, headers={"Authorization": f"Bearer {admin}"}
    ).json()["data"]
    assert [b["id"] for b in only] == [made[OTHER_KEY]]
    refused = httpx.get(gw.url + "/admin/batches", headers={"Authorization": f"Bearer {KEY}"})
    assert refused.status_code == 403
