"""A gateway with batches on, its files in a temporary directory, the runner looking for work often."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from policies.clock import ManualClock
from tests.conftest import KEY, UPSTREAM_KEY, config_text
from tests.wait import pauses

DEADLINE_S = 60.0


def batch_sections(files_dir: str, max_bytes: int = 200 * 1024 * 1024, concurrency: int = 16) -> str:
    return f"""files:
  dir: {files_dir}
  max_bytes: {max_bytes}
batches:
  poll_s: 0.05
  concurrency: {concurrency}
  lease_s: 30
"""


def flaky_model(upstream_url: str) -> str:
    """An alias whose upstream fails (500) every request whose last message says FAIL; one attempt only."""
    return f"""  - name: flaky
    retry: {{attempts: 1}}
    deployments:
      - provider: openai-compatible
        model: flaky
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}
        price: {{input: 2.0, output: 8.0}}"""


@pytest.fixture
def clock() -> ManualClock:
    """The gateway's clock, for a test to move (start it with ``start_gateway(text, clock=clock)``)."""
    return ManualClock()


@pytest.fixture
def batch_gateway(upstream, start_gateway, tmp_path):
    text = config_text(
        upstream[0].url, flaky_model(upstream[0].url), server=batch_sections(str(tmp_path / "files"))
    )
    return start_gateway(text)


def alias(name: str, provider: str, model: str, api_base: str) -> str:
    """A ``models:`` entry: one deployment, the fakes' key."""
    return f"""  - name: {name}
    deployments:
      - {{provider: {provider}, model: {model}, api_base: "{api_base}", api_key: {UPSTREAM_KEY}}}"""


@pytest.fixture
def client_with(upstream, start_gateway, tmp_path) -> Iterator[Callable[[str], openai.OpenAI]]:
    """An openai client on a batch gateway with more aliases (``models:`` YAML, as config_text takes them)."""
    clients: list[openai.OpenAI] = []

    def make(models: str) -> openai.OpenAI:
        gateway = start_gateway(
            config_text(upstream[0].url, models, server=batch_sections(str(tmp_path / "files")))
        )
        clients.append(openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20))
        return clients[-1]

    yield make
    for made in clients:
        made.close()


@pytest.fixture
def client(batch_gateway):
    with openai.OpenAI(base_url=batch_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def chat_line(custom_id: str, content: str, model: str = "chat") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 16},
    }


def upload(client: openai.OpenAI, data: bytes, name: str = "in.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def wait_for(
    client: openai.OpenAI,
    batch_id: str,
    done: Callable[[Any], bool] | None = None,
    deadline_s: float = DEADLINE_S,
) -> Any:
    """Polls the batch until ``done`` (default: a terminal status) or the deadline."""
    done = done or (lambda b: b.status in ("completed", "failed", "expired", "cancelled"))
    deadline, waits = time.monotonic() + deadline_s, pauses(0.05, 0.25)  # a request a look
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(next(waits))


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines() if line.strip()]


def batch_records(url: str, count: int) -> list[dict[str, Any]]:
    """The ledger's batch request records once ``count`` are in (they are settled off the answer's path)."""
    deadline, waits = time.monotonic() + DEADLINE_S, pauses(0.05, 0.25)
    while True:
        got = httpx.get(
            url + "/admin/usage", params={"group_by": "request"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert got.status_code == 200, got.text
        records = [r for r in got.json()["data"] if r["source"] == "batch"]
        if len(records) >= count:
            return records
        assert time.monotonic() < deadline, f"{len(records)} ledger records of {count}"
        time.sleep(next(waits))
