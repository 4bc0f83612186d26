"""Encryption at rest beyond the cache: stored responses (in Redis) and uploaded files / batch outputs (on disk,
sealed frame by frame) hold no plaintext, read back through the API, and read as absent, not as a crash, once
their key is retired; the ``Sealer`` helper other stores use; and retention per tenant, on the injected clock."""

from __future__ import annotations

import asyncio
import base64
import os

import httpx
import openai
import pytest
import redis

from gateway.requestlog import REQUEST_LOG
from gateway.security import crypto
from gateway.security.config import DataKey, EncryptionConfig
from gateway.security.retention import RETENTION
from policies.clock import ManualClock
from tests.conftest import KEY, OTHER_KEY, config_text
from tests.security.serve import ADMIN, ADMIN_KEY, poll

PLAN = "the secret plan is blue"


def _key(tmp_path, name: str) -> str:
    path = tmp_path / name
    path.write_text(base64.b64encode(os.urandom(32)).decode())
    return str(path)


def _config(upstream_url: str, tmp_path, keys: list[tuple[str, str]], redis_url: str | None = None) -> str:
    listed = ", ".join(f"{{id: {key_id}, file: {path}}}" for key_id, path in keys)
    stores = f'stores: {{redis_url: "{redis_url}"}}\n' if redis_url else ""
    return (
        config_text(upstream_url)
        + stores
        + f"""files: {{dir: "{tmp_path / "files"}"}}
encryption: {{keys: [{listed}]}}
"""
    )


def _client(gateway, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def test_stored_responses_are_ciphertext_in_redis_and_absent_once_their_key_is_retired(
    start_gateway, upstream, redis_server, tmp_path
):
    old, new = _key(tmp_path, "old"), _key(tmp_path, "new")
    gateway = start_gateway(_config(upstream[0].url, tmp_path, [("k1", old)], redis_server.url))
    with _client(gateway) as client:
        response = client.responses.create(model="chat", input=PLAN)
        assert PLAN in client.responses.retrieve(response.id).output_text  # read back through the API
        assert client.responses.input_items.list(response.id).data[0].content[0].text == PLAN  # type: ignore[index, union-attr]
    with redis.Redis.from_url(redis_server.url) as db:
        value = db.get(f"gw:resp:acme:{response.id}")
    assert isinstance(value, bytes) and value.startswith(b"gwenc1.k1.") and b"secret plan" not in value
    rotated = start_gateway(_config(upstream[0].url, tmp_path, [("k2", new), ("k1", old)], redis_server.url))
    with _client(rotated) as client:
        assert PLAN in client.responses.retrieve(response.id).output_text  # the old key still opens it
        follow = client.responses.create(model="chat", input="and then?", previous_response_id=response.id)
        assert PLAN in str(upstream[1].requests[-1].body)  # continued from the sealed turn
    retired = start_gateway(_config(upstream[0].url, tmp_path, [("k2", new)], redis_server.url))
    with _client(retired) as client:
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        assert client.responses.retrieve(follow.id).id == follow.id  # sealed with k2: still there


def test_files_are_sealed_on_disk_frame_by_frame_and_absent_once_their_key_is_retired(
    start_gateway, upstream, redis_server, tmp_path
):
    old, new = _key(tmp_path, "old"), _key(tmp_path, "new")
    lines = b"".join(
        b'{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions", "body": '
        b'{"model": "chat", "messages": [{"role": "user", "content": "%s %d"}]}}\n' % (i, PLAN.encode(), i)
        for i in range(2000)
    )  # ~300 KB: several frames
    gateway = start_gateway(_config(upstream[0].url, tmp_path, [("k1", old)], redis_server.url))
    with _client(gateway) as client:
        uploaded = client.files.create(file=("batch.jsonl", lines), purpose="batch")
        assert uploaded.bytes == len(lines)
        assert client.files.content(uploaded.id).read() == lines
    on_disk = (tmp_path / "files" / uploaded.id).read_bytes()
    assert PLAN.encode() not in on_disk and b"custom_id" not in on_disk and len(on_disk) > len(lines)
    rotated = start_gateway(_config(upstream[0].url, tmp_path, [("k2", new), ("k1", old)], redis_server.url))
    with _client(rotated) as client:
        assert client.files.content(uploaded.id).read() == lines
    retired = start_gateway(_config(upstream[0].url, tmp_path, [("k2", new)], redis_server.url))
    with _client(retired) as client, pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id).read()
    # bytes altered on disk: absent too, not a partial or corrupted download
    (tmp_path / "files" / uploaded.id).write_bytes(on_disk[:100] + bytes([on_disk[100] ^ 1]) + on_disk[101:])
    with _client(gateway) as client, pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id).read()


def test_the_sealer_helper_seals_opens_and_passes_through_when_encryption_is_off(tmp_path):
    sealer = crypto.sealer(EncryptionConfig(keys=(DataKey(id="k1", file=_key(tmp_path, "k")),)))
    sealed = sealer.seal("a request body with " + PLAN, "req-1")
    assert sealed.startswith("gwenc1.k1.") and "secret plan" not in sealed
    assert sealer.open(sealed, "req-1") == "a request body with " + PLAN
    assert sealer.open(sealed, "req-2") is None  # bound to where it is kept
    assert (
        crypto.sealer(EncryptionConfig(keys=(DataKey(id="k2", file=_key(tmp_path, "j")),))).open(
            sealed, "req-1"
        )
        is None
    )
    off = crypto.sealer(None)
    assert (
        off.seal("plain", "x") == "plain"
        and off.open("plain", "x") == "plain"
        and off.open(sealed, "x") is None
    )


def test_a_tenants_retention_deletes_its_responses_files_and_request_log_records(
    start_gateway, upstream, tmp_path
):
    clock = ManualClock()
    text = (
        config_text(upstream[0].url)
        + ADMIN
        + f"""files: {{dir: "{tmp_path / "files"}"}}
request_log: {{path: "{tmp_path / "requests.db"}", flush_interval_s: 0.05}}
"""
    )
    text = text.replace(
        '    models: ["chat", "embed"', '    retention_days: 0.04\n    models: ["chat", "embed"', 1
    )
    gateway = start_gateway(text, clock=clock)
    kept = {}
    for key in (KEY, OTHER_KEY):  # acme keeps ~1 hour, globex the global settings (a day, 30 days)
        with _client(gateway, key) as client:
            kept[key] = (
                client.responses.create(model="chat", input="hello").id,
                client.files.create(file=("in.jsonl", b'{"a": 1}\n'), purpose="batch").id,
            )
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def logged(tenant: str) -> int:
        return len(
            httpx.get(gateway.url + "/admin/requests", params={"tenant": tenant}, headers=admin).json()[
                "data"
            ]
        )

    assert poll(lambda: logged("acme") >= 2 and logged("globex") >= 2)
    before = logged("globex")

    clock.advance(2 * 3600)
    swept = asyncio.run_coroutine_threadsafe(gateway.app[RETENTION].sweep(), gateway.loop).result(30)
    assert swept["files"] == 1 and swept["request_log_records"] >= 2
    with _client(gateway) as acme:
        with pytest.raises(openai.NotFoundError):
            acme.responses.retrieve(kept[KEY][0])
        with pytest.raises(openai.NotFoundError):
            acme.files.retrieve(kept[KEY][1])
    assert not (tmp_path / "files" / kept[KEY][1]).exists()  # its bytes went too
    with _client(gateway, OTHER_KEY) as globex:
        assert globex.responses.retrieve(kept[OTHER_KEY][0]).id == kept[OTHER_KEY][0]
        assert globex.files.content(kept[OTHER_KEY][1]).read() == b'{"a": 1}\n'
    assert (tmp_path / "files" / kept[OTHER_KEY][1]).exists()
    assert logged("globex") >= before
    assert all(
        row["tenant"] != "acme" or row["endpoint"] != "/v1/responses"
        for row in httpx.get(gateway.url + "/admin/requests", headers=admin).json()["data"]
    )
    assert REQUEST_LOG in gateway.app


def test_a_batch_runs_on_sealed_files_and_its_output_is_sealed_too(start_gateway, upstream, tmp_path):
    from tests.batches.conftest import batch_sections, chat_line, jsonl, read_lines, upload, wait_for

    text = (
        config_text(upstream[0].url, server=batch_sections(str(tmp_path / "files")))
        + f"encryption: {{keys: [{{id: k1, file: {_key(tmp_path, 'k')}}}]}}\n"
    )
    gateway = start_gateway(text)
    with _client(gateway) as client:
        file_id = upload(client, jsonl(chat_line(f"req-{i}", f"{PLAN} {i}") for i in range(3)))
        batch = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_for(client, batch.id)
        assert done.status == "completed" and done.output_file_id is not None, done.errors
        output = read_lines(client, done.output_file_id)
    assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in output] == [
        f"Echo: {PLAN} {i}" for i in range(3)
    ]
    for name in (file_id, done.output_file_id):
        on_disk = (tmp_path / "files" / name).read_bytes()
        assert b"secret plan" not in on_disk and b"custom_id" not in on_disk
