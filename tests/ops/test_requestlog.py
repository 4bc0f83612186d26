"""The request log: every API request's record in SQLite, read back through GET /admin/requests with filters;
a database that falls behind drops records into a counter, never slows a request; old records expire."""

from __future__ import annotations

import sqlite3
import time

import httpx
import openai
import pytest

from gateway.auth import hash_key, new_key
from gateway.config import RequestLogConfig
from gateway.requestlog import REQUEST_LOG, RequestLog
from policies.record import RequestRecord
from tests.conftest import KEY, OTHER_KEY, config_text
from tests.ops.gateway_process import poll

ADMIN_KEY = new_key()


@pytest.fixture
def logged(upstream, start_gateway, tmp_path):  # type: ignore[no-untyped-def]
    text = config_text(upstream[0].url) + f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
request_log:
  path: {tmp_path / "requests.db"}
  flush_interval_s: 0.05
"""
    return start_gateway(text)


def requests_of(gateway, key: str = ADMIN_KEY, **filters) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.get(gateway.url + "/admin/requests", params=filters, timeout=10,
                     headers={"Authorization": f"Bearer {key}"})


def test_every_request_is_logged_and_found_by_its_filters(logged):
    with openai.OpenAI(base_url=logged.url + "/v1", api_key=KEY, max_retries=0) as acme, \
            openai.OpenAI(base_url=logged.url + "/v1", api_key=OTHER_KEY, max_retries=0) as globex:
        ok = acme.chat.completions.with_raw_response.create(model="chat", messages=[{"role": "user", "content": "a b"}])
        with pytest.raises(openai.NotFoundError):
            acme.chat.completions.create(model="private", messages=[{"role": "user", "content": "x"}])
        globex.embeddings.create(model="embed", input="hello")
    request_id = ok.headers["x-request-id"]
    [row] = poll(lambda: requests_of(logged, request_id=request_id).json()["data"], "the record")
    usage = ok.parse().usage
    assert row["tenant"] == "acme" and row["alias"] == "chat" and row["status"] == 200
    assert row["endpoint"] == "/v1/chat/completions" and row["deployment"]
    assert row["prompt_tokens"] == usage.prompt_tokens and row["completion_tokens"] == usage.completion_tokens
    assert row["latency_ms"] > 0 and row["attempts"].endswith(":200")
    poll(lambda: len(requests_of(logged).json()["data"]) == 3, "three records")
    assert [r["status"] for r in requests_of(logged, tenant="acme").json()["data"]] == [404, 200]
    assert [r["tenant"] for r in requests_of(logged, status=404).json()["data"]] == ["acme"]
    assert [r["tenant"] for r in requests_of(logged, alias="embed").json()["data"]] == ["globex"]
    assert len(requests_of(logged, key_id=hash_key(OTHER_KEY)[7:19]).json()["data"]) == 1
    assert requests_of(logged, limit=1).json()["data"][0]["alias"] == "embed"  # newest first
    ts = row["ts"]
    in_window = requests_of(logged, **{"from": ts, "to": ts + 1e-6}).json()["data"]
    assert [r["request_id"] for r in in_window] == [request_id]
    # a tenant key reads its own tenant only
    assert {r["tenant"] for r in requests_of(logged, KEY).json()["data"]} == {"acme"}
    refused = requests_of(logged, KEY, tenant="globex")
    assert refused.status_code == 403 and refused.json()["error"]["type"]
    bad = requests_of(logged, status="ok")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
    assert requests_of(logged, colour="red").status_code == 400


def test_a_full_buffer_drops_and_counts_instead_of_waiting(tmp_path):
    from gateway.requestlog import DROPPED

    log = RequestLog(RequestLogConfig(path=str(tmp_path / "r.db"), max_buffer=3, flush_interval_s=3600))
    log.start()  # the writer thread sleeps an hour: the buffer fills
    before = DROPPED._value.get()
    started = time.perf_counter()
    for i in range(10):
        log.add(RequestRecord(request_id=f"r{i}", started=0.0, endpoint="/v1/chat/completions"), 0.001, 200)
    assert time.perf_counter() - started < 1.0
    assert DROPPED._value.get() - before == 7
    log.close()  # writes what it holds before stopping
    rows = sqlite3.connect(tmp_path / "r.db").execute("SELECT request_id FROM requests ORDER BY request_id").fetchall()
    assert rows == [("r0",), ("r1",), ("r2",)]


def test_records_older_than_the_retention_are_deleted(tmp_path):
    now = [1_000_000.0]
    log = RequestLog(RequestLogConfig(path=str(tmp_path / "r.db"), retention_days=1, flush_interval_s=0.01),
                     clock=lambda: now[0])
    log.start()
    log.add(RequestRecord(request_id="old", started=0.0, endpoint="/v1/chat/completions"), 0.001, 200)
    poll(lambda: log.query({}, 10), "the first record written")
    now[0] += 86400 + 61  # a day and a retention sweep later
    log.add(RequestRecord(request_id="new", started=0.0, endpoint="/v1/chat/completions"), 0.001, 200)
    poll(lambda: [r["request_id"] for r in log.query({}, 10)] == ["new"], "the old record deleted")
    log.close()


def test_the_request_log_can_be_turned_off(upstream, start_gateway):
    gateway = start_gateway(config_text(upstream[0].url) + "request_log: {enabled: false}\n")
    assert REQUEST_LOG not in gateway.app
