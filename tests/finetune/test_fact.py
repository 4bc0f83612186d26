"""The real thing, small: a rank-8 adapter trained on SmolLM2-135M-Instruct through the openai SDK learns a
made-up fact the base model does not know, its training loss going down."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import cast

import pytest

from tests.finetune.conftest import events, gateway_text, sdk, upload, wait_for
from tests.finetune.dataset import FACT, QUESTION, examples, jsonl
from tests.harness import reference_model

# Bounded, not timed: about two and a half minutes of CPU (a minute or two on an idle 2-core machine), niced: on
# this shared machine under other engineers' work (load average 15-20) one run took 9 minutes, another did not
# finish in 25.
DEADLINE_S = 3000
pytestmark = pytest.mark.timeout(DEADLINE_S + 300)


@pytest.fixture
def smollm2_gateway(upstream, start_gateway, tiny_path, tmp_path):
    return start_gateway(gateway_text(upstream[0].url, tiny_path, tmp_path, smollm2=True))


def test_a_trained_adapter_knows_the_fact_and_the_base_model_does_not(smollm2_gateway, tmp_path):
    with sdk(smollm2_gateway.url) as client:
        job = client.fine_tuning.jobs.create(
            model="smollm2",
            training_file=upload(client, jsonl(examples(12))),
            seed=1,
            suffix="zorblax",
            hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 3},
            extra_body={"lora": {"rank": 8, "alpha": 16}},
        )
        done = wait_for(client, job.id, deadline_s=DEADLINE_S)
        assert done.status == "succeeded", done.error
        losses = [e.data["train_loss"] for e in events(client, job.id) if e.type == "metrics"]
        assert len(losses) == 9
        assert (
            sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 / 4
        )  # the last epoch's mean, under a quarter of the first's
    base, tuned = _answers(tmp_path / "fine_tuning" / job.id / "adapter")
    assert FACT not in base
    assert FACT in tuned
    with sdk(smollm2_gateway.url) as client:  # and the gateway serves the trained model with it at once
        served = client.chat.completions.create(
            model=str(done.fine_tuned_model),
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=16,
            temperature=0,
        )
    assert FACT in (served.choices[0].message.content or "")


def _answers(adapter: Path) -> tuple[str, str]:
    """The base model's and the adapter's greedy answers to the question (transformers + peft)."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, BatchEncoding

    from local_engine import resolve_model

    path = resolve_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = reference_model(path)
    prompt = cast(
        "BatchEncoding",
        tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        ),
    )

    def answer(m: torch.nn.Module) -> str:
        out = m.generate(**prompt, max_new_tokens=16, do_sample=False)  # type: ignore[operator]
        return str(tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True))

    base = answer(model)
    with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5.24 deprecates
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        tuned = PeftModel.from_pretrained(model, str(adapter))
    return base, answer(tuned)
