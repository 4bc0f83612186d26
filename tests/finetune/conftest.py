"""A gateway with fine-tuning on: a tiny random Llama (fast to train) and SmolLM2 behind local aliases,
files and job directories in a temporary directory, the runner looking for work often."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import KEY, OTHER_KEY, config_text
from tests.harness import ServerThread
from tests.local_engine.conftest import _build
from tests.wait import pauses

DEADLINE_S = 600.0  # a training on this shared 2-core machine: bounded, never timed
PRICE_PER_1M = 3.0


def sections(tmp: Path, workers: int = 1, extra: str = "") -> str:
    return f"""files:
  dir: {tmp / "files"}
fine_tuning:
  dir: {tmp / "fine_tuning"}
  poll_s: 0.05
  lease_s: 5
  workers: {workers}
  max_seq_len: 128
  price_per_1m_tokens: {PRICE_PER_1M}
{extra}"""


def local_model(name: str, path: Path | None) -> str:
    model_path = f"\n        model_path: {path}" if path is not None else ""
    return f"""  - name: {name}
    deployments:
      - provider: local
        model: {name}{model_path}
        engine: {{max_num_seqs: 4, kv_cache_gib: 0.02, max_model_len: 128, load_timeout_s: 120}}"""


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny") / "llama", "llama")


def gateway_text(
    upstream_url: str, tiny: Path, tmp: Path, workers: int = 1, extra: str = "", smollm2: bool = False
) -> str:
    models = local_model("tiny", tiny) + ("\n" + local_model("smollm2", None) if smollm2 else "")
    return config_text(upstream_url, models, server=sections(tmp, workers, extra))


@pytest.fixture
def ft_gateway(upstream, start_gateway, tiny_path, tmp_path) -> ServerThread:
    return start_gateway(gateway_text(upstream[0].url, tiny_path, tmp_path))


def sdk(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def client(ft_gateway) -> Iterator[openai.OpenAI]:
    with sdk(ft_gateway.url) as c:
        yield c


@pytest.fixture
def other(ft_gateway) -> Iterator[openai.OpenAI]:
    with sdk(ft_gateway.url, OTHER_KEY) as c:
        yield c


def upload(client: openai.OpenAI, data: bytes, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune").id


def wait_for(
    client: openai.OpenAI,
    job_id: str,
    done: Callable[[Any], bool] | None = None,
    deadline_s: float = DEADLINE_S,
) -> Any:
    """Polls the job until ``done`` (default: a terminal status) or the deadline."""
    done = done or (lambda j: j.status in ("succeeded", "failed", "cancelled"))
    deadline, waits = time.monotonic() + deadline_s, pauses(0.05, 0.25)  # a request a look
    while True:
        try:
            job = client.fine_tuning.jobs.retrieve(job_id)
        except openai.APIStatusError as exc:  # 503: the store is unreachable for now; a poller asks again
            assert exc.status_code == 503 and time.monotonic() < deadline, exc
            time.sleep(0.1)
            continue
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(next(waits))


def events(client: openai.OpenAI, job_id: str) -> list[Any]:
    """Every event of the job, oldest first (paged through as the SDK does)."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=50))))
