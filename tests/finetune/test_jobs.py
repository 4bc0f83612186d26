"""/v1/fine_tuning/jobs through the openai SDK, on a tiny random Llama (training takes seconds)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import openai
import pytest

from tests.conftest import KEY, OTHER_KEY
from tests.finetune.conftest import PRICE_PER_1M, events, gateway_text, local_model, sdk, upload, wait_for
from tests.finetune.dataset import WITH_TOOLS, examples, jsonl


def test_a_job_trains_checkpoints_each_epoch_and_serves_its_model_to_its_tenant_only(
    client, other, ft_gateway
):
    training = upload(client, jsonl([*examples(11), WITH_TOOLS]))  # tool calls and text parts train too
    validation = upload(client, jsonl(examples(4)), "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=training,
        validation_file=validation,
        suffix="zorb",
        seed=7,
        hyperparameters={"n_epochs": 2, "batch_size": 4},
        metadata={"team": "a"},
        extra_body={"lora": {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}},
    )
    assert job.status == "validating_files" and job.model == "tiny" and job.seed == 7
    assert job.training_file == training and job.validation_file == validation
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny:acme:zorb:{job.id.removeprefix('ftjob-')[:8]}"
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 4
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at

    log = events(client, job.id)
    metrics = [e for e in log if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(1, 7))  # 12 examples / 4, twice
    assert all(e.data["train_loss"] > 0 for e in metrics)
    assert [e.data["step"] for e in metrics if "valid_loss" in e.data] == [3, 6]  # each epoch's end
    assert log[-1].message == f"New fine-tuned model created: {done.fine_tuned_model}"
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    after = client.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id)
    assert after.data[0].id == log[-3].id

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [6, 3]  # newest first
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-6"

    # The model is the tenant's: listed and found for acme, unknown to globex.
    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    assert client.models.retrieve(done.fine_tuned_model).owned_by == "acme"
    assert done.fine_tuned_model not in [m.id for m in other.models.list()]
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve(done.fine_tuned_model)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError):  # nor through its base alias, by the adapter's name
        client.chat.completions.create(
            model=f"tiny:{done.fine_tuned_model}", messages=[{"role": "user", "content": "hi"}]
        )

    # The job is the tenant's too.
    for call in (
        lambda: other.fine_tuning.jobs.retrieve(job.id),
        lambda: other.fine_tuning.jobs.cancel(job.id),
        lambda: other.fine_tuning.jobs.list_events(job.id),
        lambda: other.fine_tuning.jobs.checkpoints.list(job.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in [j.id for j in other.fine_tuning.jobs.list()]
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]

    # The tokens trained are charged to the tenant, at the configured price.
    usage = httpx.get(
        ft_gateway.url + "/admin/usage",
        params={"group_by": "request"},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["data"]
    row = next(r for r in usage if r["request_id"] == job.id)
    assert row["prompt_tokens"] == done.trained_tokens
    assert row["cost_usd"] == pytest.approx(done.trained_tokens * PRICE_PER_1M / 1e6)


def test_a_bad_training_file_fails_the_job_naming_each_bad_line(client):
    good = examples(12)
    lines: list[Mapping[str, object]] = [
        WITH_TOOLS,
        {"messages": [{"role": "user", "content": "no answer"}]},
        good[1],
        {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        *good[2:],
    ]
    data = jsonl(lines) + b"{not json\n"
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, data))
    done = wait_for(client, job.id)
    assert done.status == "failed"
    assert done.error.code == "invalid_training_file" and done.error.param == "training_file"
    message = done.error.message
    assert "Line 2 has no message with role 'assistant'" in message
    assert "Line 4 message 0: unrecognized role 'wizard'" in message
    assert "Line 5 message 0: is missing its 'content'" in message
    assert f"Line {len(lines) + 1} is not valid JSON" in message
    assert "Line 1 " not in message and "Line 3 " not in message
    bad = [e.message for e in events(client, job.id) if e.level == "error"]
    assert sum("Line " in m for m in bad) == 4
    assert done.fine_tuned_model is None and done.trained_tokens is None


def test_too_few_examples_and_a_bad_validation_file_fail(client):
    few = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, jsonl(examples(3))))
    bad_valid = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=upload(client, jsonl(examples(12))),
        validation_file=upload(client, b'{"messages": []}\n', "valid.jsonl"),
    )
    failed = wait_for(client, few.id)
    assert failed.status == "failed" and "has 3 example(s), but must have at least 10" in failed.error.message
    failed = wait_for(client, bad_valid.id)
    assert failed.status == "failed" and failed.error.code == "invalid_validation_file"
    assert (
        failed.error.param == "validation_file"
        and "Line 1 is missing a non-empty 'messages' list" in failed.error.message
    )


def test_bad_requests_are_400_in_openais_format(client, ft_gateway):
    training = upload(client, jsonl(examples(12)))
    batch_file = client.files.create(file=("b.jsonl", b"{}\n"), purpose="batch").id
    cases = [
        ({"model": "chat", "training_file": training}, "model"),  # not a local model
        ({"model": "private", "training_file": training}, "model"),
        ({"model": "tiny"}, "training_file"),
        ({"model": "tiny", "training_file": "file-nope"}, "training_file"),
        ({"model": "tiny", "training_file": batch_file}, "training_file"),  # purpose batch
        (
            {"model": "tiny", "training_file": training, "hyperparameters": {"n_epochs": 0}},
            "hyperparameters.n_epochs",
        ),
        (
            {"model": "tiny", "training_file": training, "hyperparameters": {"batch_size": "big"}},
            "hyperparameters.batch_size",
        ),
        ({"model": "tiny", "training_file": training, "hyperparameters": {"warmup": 3}}, "hyperparameters"),
        ({"model": "tiny", "training_file": training, "lora": {"rank": 1000}}, "lora.rank"),
        (
            {"model": "tiny", "training_file": training, "lora": {"target_modules": ["lm_head"]}},
            "lora.target_modules",
        ),
        ({"model": "tiny", "training_file": training, "suffix": "no spaces"}, "suffix"),
        ({"model": "tiny", "training_file": training, "seed": -1}, "seed"),
        ({"model": "tiny", "training_file": training, "method": {"type": "dpo"}}, "method.type"),
    ]
    for body, param in cases:
        got = httpx.post(
            ft_gateway.url + "/v1/fine_tuning/jobs", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert got.status_code == 400, (body, got.text)
        error = got.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, (body, error)
    other_file = upload(sdk(ft_gateway.url, OTHER_KEY), jsonl(examples(12)))
    got = httpx.post(
        ft_gateway.url + "/v1/fine_tuning/jobs",
        json={"model": "tiny", "training_file": other_file},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert got.status_code == 400 and got.json()["error"]["param"] == "training_file"  # globex's file


def test_one_job_trains_at_a_time_the_next_waits_queued_and_cancel_stops_a_running_one(client):
    training = upload(client, jsonl(examples(12)))
    long = client.fine_tuning.jobs.create(
        model="tiny", training_file=training, hyperparameters={"n_epochs": 50, "batch_size": 1}
    )
    running = wait_for(
        client,
        long.id,
        lambda j: j.status == "running" and any(e.type == "metrics" for e in events(client, j.id)),
    )
    assert running.status == "running"
    second = client.fine_tuning.jobs.create(
        model="tiny", training_file=training, hyperparameters={"n_epochs": 1, "batch_size": 4}
    )
    queued = wait_for(client, second.id, lambda j: j.status != "validating_files")
    assert queued.status == "queued"  # the one worker is busy
    assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"

    cancelled = client.fine_tuning.jobs.cancel(long.id)
    assert cancelled.id == long.id
    assert wait_for(client, long.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(long.id)
    assert wait_for(client, second.id).status == "succeeded"  # the freed worker takes the queued job
    steps = [e.data["step"] for e in events(client, long.id) if e.type == "metrics"]
    assert steps and max(steps) < 50 * 12
    assert client.fine_tuning.jobs.retrieve(long.id).fine_tuned_model is None


def test_a_queued_job_is_cancelled_at_once(upstream, start_gateway, tiny_path, tmp_path):
    server = start_gateway(gateway_text(upstream[0].url, tiny_path, tmp_path))
    with sdk(server.url) as client:
        training = upload(client, jsonl(examples(12)))
        first = client.fine_tuning.jobs.create(
            model="tiny", training_file=training, hyperparameters={"n_epochs": 50}
        )
        wait_for(client, first.id, lambda j: j.status == "running")
        second = client.fine_tuning.jobs.create(model="tiny", training_file=training)
        wait_for(client, second.id, lambda j: j.status == "queued")
        assert client.fine_tuning.jobs.cancel(second.id).status == "cancelled"
        client.fine_tuning.jobs.cancel(first.id)
        assert wait_for(client, first.id).status == "cancelled"
        assert client.fine_tuning.jobs.retrieve(second.id).status == "cancelled"


def test_a_training_that_cannot_run_fails_the_job_with_the_trainers_error(
    upstream, start_gateway, tiny_path, tmp_path
):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    text = gateway_text(upstream[0].url, tiny_path, tmp_path).replace(
        "tenants:", local_model("gone", tmp_path / "not-a-model") + "\ntenants:"
    )
    server = start_gateway(text)
    with sdk(server.url, OTHER_KEY) as client:  # globex may use every alias
        job = client.fine_tuning.jobs.create(model="gone", training_file=upload(client, jsonl(examples(12))))
        failed = wait_for(client, job.id)
    assert failed.status == "failed" and failed.error.code == "training_failed"
    assert (
        failed.error.message.startswith("ValueError: ") and "tokenizer" in failed.error.message
    )  # the trainer's own
