"""A training job survives its gateway: SIGKILLed mid-training (a real process, a real redis-server) and
started again, the job resumes after its last checkpoint and succeeds; a checkpoint written as its gateway died,
never recorded by it, is listed all the same."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import KEY
from tests.finetune.conftest import events, gateway_text, sdk, upload, wait_for
from tests.finetune.dataset import examples, jsonl
from tests.gateway.test_server import start_serve_with
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(900)  # two gateway processes starting on a busy machine


def test_killed_mid_training_resumes_from_its_last_checkpoint(tmp_path, upstream, tiny_path):
    redis = RedisServer()
    config = tmp_path / "config.yaml"
    config.write_text(
        gateway_text(upstream[0].url, tiny_path, tmp_path)
        # a Redis call that outlasts the default 0.5 s on a loaded machine would send this process to its
        # memory for a while (fail open), where the job's events and checkpoints are not: not this test's point
        + f"stores:\n  redis_url: {redis.url}\n  redis_timeout_s: 10\n"
    )
    process, url = start_serve_with(config, {}, stdout=tmp_path / "first.log")
    try:
        with sdk(url, KEY) as client:
            job = client.fine_tuning.jobs.create(
                model="tiny",
                training_file=upload(client, jsonl(examples(12))),
                hyperparameters={"n_epochs": 50, "batch_size": 1},
            )
            wait_for(client, job.id, lambda j: len(client.fine_tuning.jobs.checkpoints.list(j.id).data) >= 2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    # The newest checkpoint's record lost, as when the gateway dies between the trainer writing it and the
    # gateway recording it (CI once drew that): the files are on disk, the list must still show it.
    assert redis.cli("RPOP", f"ftjob:{job.id}:checkpoints")
    process, url = start_serve_with(config, {}, stdout=tmp_path / "second.log")
    try:
        with sdk(url, KEY) as client:
            done = wait_for(client, job.id)
            log = events(client, job.id)
            checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id, limit=100).data
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        redis.stop()
    assert done.status == "succeeded", done.error
    resumed = [e for e in log if e.message.startswith("Resumed from checkpoint epoch-")]
    assert len(resumed) == 1
    epoch = int(resumed[0].message.rsplit("-", 1)[1])
    assert 2 <= epoch < 50
    # Steps after the resume go on from the checkpoint's: each of the 600 steps trained, none skipped.
    at = log.index(resumed[0])
    after = [e.data["step"] for e in log[at:] if e.type == "metrics"]
    assert after == list(range(epoch * 12 + 1, 50 * 12 + 1))
    assert sorted({c.step_number for c in checkpoints}) == [12 * e for e in range(1, 51)]
