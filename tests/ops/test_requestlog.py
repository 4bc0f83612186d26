"""The request log: every request's record in SQLite or in a real PostgreSQL server, read back through
GET /admin/requests with filters; a database that falls behind drops records into a counter, never slows a
request; old records expire; opt-in bodies, PII-masked, cut and sealed, shown to admins only."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from gateway.auth import hash_key, new_key
from gateway.config import ConfigError, RequestLogConfig, parse_config
from gateway.requestlog import DROPPED, REQUEST_LOG, PostgresRequestLog, RequestLog, SqliteRequestLog
from policies.record import RequestRecord
from tests.conftest import KEY, OTHER_KEY, config_text
from tests.ops.gateway_process import poll
from tests.ops.postgres_server import PostgresServer

ADMIN_KEY = new_key()
_DATABASES = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> str:
    """The request_log settings of one store: a SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"store: sqlite\n  path: {tmp_path / 'requests.db'}"
    return asyncio.run(_database(request.getfixturevalue("postgres")))


def settings(store: str, **extra: Any) -> RequestLogConfig:
    """RequestLogConfig from the store fixture's YAML lines."""
    values: dict[str, Any] = dict(line.strip().split(": ", 1) for line in store.splitlines())
    return RequestLogConfig(**values, **extra)


def make_log(config: RequestLogConfig, **kwargs: Any) -> RequestLog:
    kind = PostgresRequestLog if config.store == "postgres" else SqliteRequestLog
    return kind(config, **kwargs)


@pytest.fixture
def logged(upstream, start_gateway, store):
    text = (
        config_text(upstream[0].url)
        + f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
request_log:
  {store}
  flush_interval_s: 0.05
"""
    )
    return start_gateway(text)


def requests_of(gateway, key: str = ADMIN_KEY, **filters) -> httpx.Response:
    return httpx.get(
        gateway.url + "/admin/requests",
        params=filters,
        timeout=10,
        headers={"Authorization": f"Bearer {key}"},
    )


def one_request(gateway, request_id: str, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}/admin/requests/{request_id}", timeout=10, headers={"Authorization": f"Bearer {key}"}
    )


def test_every_request_is_logged_and_found_by_its_filters(logged):
    with (
        openai.OpenAI(base_url=logged.url + "/v1", api_key=KEY, max_retries=0) as acme,
        openai.OpenAI(base_url=logged.url + "/v1", api_key=OTHER_KEY, max_retries=0) as globex,
    ):
        ok = acme.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "a b"}]
        )
        with pytest.raises(openai.NotFoundError):
            acme.chat.completions.create(model="private", messages=[{"role": "user", "content": "x"}])
        globex.embeddings.create(model="embed", input="hello")
    request_id = ok.headers["x-request-id"]
    [row] = poll(lambda: requests_of(logged, request_id=request_id).json()["data"], "the record")
    usage = ok.parse().usage
    assert usage is not None
    assert row["tenant"] == "acme" and row["alias"] == "chat" and row["status"] == 200
    assert row["endpoint"] == "/v1/chat/completions" and row["deployment"] and row["stream"] is False
    assert row["prompt_tokens"] == usage.prompt_tokens and row["completion_tokens"] == usage.completion_tokens
    assert row["latency_ms"] > 0 and row["attempts"].endswith(":200")
    assert "request_body" not in row  # bodies are read one record at a time, by admins
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
    # one record by id: admins only; an unknown id is a 404
    assert one_request(logged, request_id).json()["request_id"] == request_id
    assert one_request(logged, request_id, KEY).status_code == 403
    missing = one_request(logged, "no-such-request")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "id"
    # erasing a tenant's data takes its records (the PostgreSQL store from the erasure handler's thread)
    erased = httpx.delete(
        f"{logged.url}/admin/tenants/acme/data", timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert erased.status_code == 200 and erased.json()["erased"]["request_log_records"] == 2
    assert {r["tenant"] for r in requests_of(logged).json()["data"]} == {"globex"}


async def test_a_full_buffer_drops_and_counts_instead_of_waiting(store):
    log = make_log(settings(store, max_buffer=3, flush_interval_s=3600))
    await log.start()  # the writer waits an hour: the buffer fills
    before = DROPPED._value.get()
    started = time.perf_counter()
    for i in range(10):
        log.add(RequestRecord(request_id=f"r{i}", started=0.0, endpoint="/v1/chat/completions"), 0.001, 200)
    assert time.perf_counter() - started < 1.0
    assert DROPPED._value.get() - before == 7
    reader = make_log(log.config)
    await log.close()  # writes what it holds before stopping
    if isinstance(reader, PostgresRequestLog):
        await reader.start()
    rows = await reader.query({}, 10)
    await reader.close() if isinstance(reader, PostgresRequestLog) else None
    assert sorted(r["request_id"] for r in rows) == ["r0", "r1", "r2"]


class _Bodies:
    """A body policy that keeps the bodies as text, marked."""

    def stored(self, tenant: str, request_id: str, bodies: tuple[Any, Any]) -> tuple[Any, Any]:
        question, answer = (None if body is None else f"{tenant}:{body.decode()}" for body in bodies)
        return question, answer


async def test_sqlite_writes_each_queued_record_as_it_was_queued(tmp_path):
    # 301 records in one flush: without bodies they go in many to an INSERT (256 + 32 + 8 + 4 rows), with
    # bodies one by one; every value as queued, the types SQLite keeps included
    log = SqliteRequestLog(
        RequestLogConfig(path=str(tmp_path / "requests.db"), flush_interval_s=3600),
        bodies=_Bodies(),  # type: ignore[arg-type]
    )
    await log.start()
    for i in range(301):
        record = RequestRecord(
            request_id=f"r{i}",
            started=0.0,
            endpoint="/v1/chat/completions",
            tenant=f"t{i % 3}",
            stream=i % 2 == 0,
            ttft_s=None if i % 4 else i / 7,
            prompt_tokens=i or None,
            cost_usd=i / 3,
            cache="miss" if i % 5 else None,
        )
        record.attempts.extend(f"d{j}:200" for j in range(i % 3))
        bodies = (b"question", b"answer" if i % 100 == 7 else None) if i % 50 == 7 else None
        log.add(record, i / 1000, 200 + i % 3, bodies)
    queued = list(log._buffer)
    await log.close()
    db = sqlite3.connect(log.path)
    stored = db.execute("SELECT * FROM requests ORDER BY CAST(substr(request_id, 2) AS INTEGER)").fetchall()
    typed = db.execute("SELECT typeof(stream), typeof(ts), typeof(status) FROM requests").fetchall()
    assert stored == [log._stored(row) for row in queued]
    assert set(typed) == {("integer", "real", "integer")}
    assert stored[7][-2:] == ("t1:question", "t1:answer") and stored[57][-2:] == ("t0:question", None)


async def test_records_older_than_the_retention_are_deleted(store):
    now = [1_000_000.0]
    log = make_log(settings(store, retention_days=1, flush_interval_s=0.01), clock=lambda: now[0])
    await log.start()
    try:
        log.add(RequestRecord(request_id="old", started=0.0, endpoint="/v1/chat/completions"), 0.001, 200)
        await apoll(lambda: log.query({}, 10), "the first record written")
        now[0] += 86400 + 61  # a day and a retention sweep later
        log.add(RequestRecord(request_id="new", started=0.0, endpoint="/v1/chat/completions"), 0.001, 200)

        async def only_new() -> bool:
            return [r["request_id"] for r in await log.query({}, 10)] == ["new"]

        await apoll(only_new, "the old record deleted")
    finally:
        await log.close()


async def apoll(check: Any, what: str, within_s: float = 20.0) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_the_request_log_can_be_turned_off(upstream, start_gateway):
    gateway = start_gateway(config_text(upstream[0].url) + "request_log: {enabled: false}\n")
    assert REQUEST_LOG not in gateway.app


def test_postgres_needs_a_dsn():
    with pytest.raises(ConfigError) as refused:
        parse_config("request_log: {store: postgres}\n", path="c.yaml", env={})
    assert "dsn" in str(refused.value)


EMAIL = "jane.doe@example.com"


def bodies_config(
    upstream_url: str, store: str, key_dir: Any, max_body_bytes: int, extra_models: str = ""
) -> str:
    """Bodies logged (acme's PII masked in the log), sealed at rest with a fresh key, cut to ``max_body_bytes``."""
    key_file = key_dir / "data.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    text = (
        config_text(upstream_url, extra_models)
        + f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
encryption: {{keys: [{{id: k1, file: {key_file}}}]}}
request_log:
  {store}
  flush_interval_s: 0.05
  bodies: true
  max_body_bytes: {max_body_bytes}
"""
    )
    return text.replace("  - name: acme\n", "  - name: acme\n    pii: {mode: log_only}\n")


@pytest.fixture
def with_bodies(upstream, start_gateway, store, tmp_path):
    text = bodies_config(upstream[0].url, store, tmp_path, 400)
    text = text.replace("  - name: globex\n", "  - name: globex\n    log_bodies: false\n")
    return start_gateway(text), store


def stored_bodies(store: str, request_id: str) -> tuple[Any, Any]:
    """The bodies as the database holds them."""
    config = settings(store)
    if config.store == "sqlite":
        return (
            sqlite3.connect(config.path)
            .execute("SELECT request_body, response_body FROM requests WHERE request_id = ?", (request_id,))
            .fetchone()
        )

    async def read() -> Any:
        db = await asyncpg.connect(config.dsn)
        try:
            return tuple(
                await db.fetchrow(
                    "SELECT request_body, response_body FROM requests WHERE request_id = $1", request_id
                )
            )
        finally:
            await db.close()

    return asyncio.run(read())


def test_bodies_are_kept_masked_cut_and_sealed_and_shown_to_admins(with_bodies):
    gateway, store = with_bodies
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as acme,
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as globex,
    ):
        masked = acme.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": f"mail {EMAIL} today"}]
        )
        long = acme.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "word " * 300}]
        )
        other = globex.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": f"mail {EMAIL}"}]
        )
    assert EMAIL in (
        masked.parse().choices[0].message.content or ""
    )  # log_only: the answer itself is untouched
    masked_id, long_id, other_id = (r.headers["x-request-id"] for r in (masked, long, other))
    poll(lambda: len(requests_of(gateway).json()["data"]) == 3, "three records")

    shown = one_request(gateway, masked_id).json()
    sent, answered = json.loads(shown["request_body"]), json.loads(shown["response_body"])
    assert sent["messages"][0]["content"] == "mail [EMAIL_1] today"
    assert answered["choices"][0]["message"]["content"] == "Echo: mail [EMAIL_1] today"
    assert answered["id"] == masked.parse().id
    # sealed at rest: neither the address nor the text is in the database
    for value in stored_bodies(store, masked_id):
        assert value.startswith("gwenc1.k1.") and "mail" not in value and EMAIL not in value
    # cut to max_body_bytes
    cut = one_request(gateway, long_id).json()["request_body"]
    assert cut.endswith(" [cut]") and len(cut.encode()) <= 400 + len(" [cut]")
    assert cut.startswith('{"messages":') or cut.startswith('{"model":')
    # a tenant that opted out has none; a tenant key reads no bodies
    assert one_request(gateway, other_id).json()["request_body"] is None
    assert stored_bodies(store, other_id) == (None, None)
    assert one_request(gateway, masked_id, KEY).status_code == 403


async def test_replicas_share_one_postgres_table(postgres):
    """Several gateway processes start at once on one database: one makes the schema, all write to it."""
    dsn = settings(await _database(postgres)).dsn
    assert dsn is not None
    logs = [
        PostgresRequestLog(RequestLogConfig(store="postgres", dsn=dsn, flush_interval_s=0.01))
        for _ in range(3)
    ]
    await asyncio.gather(*(log.start() for log in logs))
    try:
        for i, log in enumerate(logs):
            log.add(
                RequestRecord(
                    request_id=f"replica-{i}", started=0.0, endpoint="/v1/chat/completions", tenant="acme"
                ),
                0.001,
                200,
            )

        async def all_three() -> bool:
            return len(await logs[0].query({"tenant": "acme"}, 10)) == 3

        await apoll(all_three, "every replica's record")
    finally:
        await asyncio.gather(*(log.close() for log in logs))


async def _database(server: PostgresServer) -> str:
    """A fresh database on the server, as the store fixture's YAML lines."""
    name = f"log_{os.getpid()}_{next(_DATABASES)}"
    db = await asyncpg.connect(server.dsn)
    try:
        await db.execute(f"CREATE DATABASE {name}")
    finally:
        await db.close()
    return f"store: postgres\n  dsn: {server.dsn.rsplit('/', 1)[0]}/{name}"


def test_the_compose_config_logs_to_the_postgres_service(tmp_path, upstream, redis_server, postgres):
    """deploy/config.compose.yaml with REQUEST_LOG_STORE=postgres, as docker-compose.yml's --profile postgres
    sets it, outside Docker: the records reach a real PostgreSQL."""
    from tests.gateway.test_server import start_serve_with
    from tests.ops.gateway_process import ROOT

    lines = asyncio.run(_database(postgres))
    dsn = settings(lines).dsn
    key = new_key()
    env = {
        "GATEWAY_TENANT_KEY_HASH": hash_key(key),
        "GATEWAY_WORKERS": "1",
        "OPENAI_API_KEY": "x",
        "OPENAI_API_BASE": upstream[0].url + "/v1",
        "REDIS_URL": redis_server.url,
        "QDRANT_URL": ":memory:",
        "REQUEST_LOG_STORE": "postgres",
        "REQUEST_LOG_DSN": dsn,
        "XDG_STATE_HOME": str(tmp_path),
    }
    upstream[1].api_key = None
    process, url = start_serve_with(ROOT / "deploy/config.compose.yaml", env, stdout=tmp_path / "out.log")
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60) as client:
            sent = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "to postgres"}]
            )
        request_id = sent.headers["x-request-id"]

        async def logged() -> Any:
            db = await asyncpg.connect(dsn)
            try:
                return await db.fetchrow(
                    "SELECT tenant, alias, status FROM requests WHERE request_id = $1", request_id
                )
            finally:
                await db.close()

        row = poll(lambda: asyncio.run(logged()), "the record in PostgreSQL")
        assert tuple(row) == ("default", "gpt-4o-mini", 200)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
