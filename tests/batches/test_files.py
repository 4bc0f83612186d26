"""``/v1/files`` through the openai SDK: upload, list, retrieve, content, delete; per tenant; the size cap."""

from __future__ import annotations

import io

import httpx
import openai
import pytest

from tests.conftest import OTHER_KEY, config_text

from .conftest import batch_sections, upload


def test_upload_list_retrieve_content_delete(client):
    data = b'{"a": 1}\n' * 1000
    created = client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.bytes == len(data) and created.filename == "input.jsonl" and created.purpose == "batch"
    assert created.id.startswith("file-") and created.status == "processed"
    assert client.files.retrieve(created.id).bytes == len(data)
    assert client.files.content(created.id).content == data
    assert created.id in [f.id for f in client.files.list()]
    assert created.id in [f.id for f in client.files.list(purpose="batch")]
    assert created.id not in [f.id for f in client.files.list(purpose="fine-tune")]
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)


def test_another_tenants_file_is_not_found(client, batch_gateway):
    file_id = upload(client, b'{"x": 1}\n')
    with openai.OpenAI(base_url=batch_gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as other:
        for call in (other.files.retrieve, other.files.content, other.files.delete):
            with pytest.raises(openai.NotFoundError):
                call(file_id)
        assert file_id not in [f.id for f in other.files.list()]
    assert client.files.retrieve(file_id).id == file_id


def test_bad_purpose_and_missing_file_are_400(client, batch_gateway):
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="nonsense")
    from tests.conftest import KEY

    response = httpx.post(
        batch_gateway.url + "/v1/files",
        headers={"Authorization": f"Bearer {KEY}"},
        data={"purpose": "batch"},
        files={"other": ("x", b"1")},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"
    assert client.files.list(purpose="nonsense").data == []  # nothing was kept


def test_a_file_over_the_cap_is_413_and_not_kept(upstream, start_gateway, tmp_path):
    from tests.conftest import KEY

    files_dir = tmp_path / "files"
    gw = start_gateway(config_text(upstream[0].url, server=batch_sections(str(files_dir), max_bytes=100_000)))
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 100_001)), purpose="batch")
        assert caught.value.status_code == 413
        assert client.files.list().data == []
        assert list(files_dir.iterdir()) == []  # the partial upload was removed
        assert (
            client.files.create(file=("ok.jsonl", io.BytesIO(b"x" * 99_000)), purpose="batch").bytes == 99_000
        )
