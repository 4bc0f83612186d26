"""A fine-tuned model is served at once by the local engine as a LoRA adapter (docs/lora.md), for its tenant
only: the gateway's greedy answer is the one transformers + peft give with the trained adapter merged."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import openai
import pytest

from local_engine import Tokenizer
from local_engine.detokenizer import IncrementalDetokenizer
from tests.finetune.conftest import upload, wait_for
from tests.finetune.dataset import examples, jsonl
from tests.local_engine.conftest import hf_model
from tests.local_engine.test_lora import PROMPT, _reference

TOKENS = 6


def _served(client: openai.OpenAI, model: str) -> str:
    answer = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    return answer.choices[0].text


def _expected(tiny: Path, model: Any) -> str:
    detok = IncrementalDetokenizer(Tokenizer(tiny), PROMPT)
    return "".join(detok.add(t) for t in _reference(model, PROMPT, TOKENS)[0])


def test_the_fine_tuned_model_answers_with_its_adapter_for_its_tenant_only(
    client, other, tiny_path, tmp_path
):
    from peft import PeftModel

    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=upload(client, jsonl(examples(12))),
        seed=3,
        hyperparameters={"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 20},
    )
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5.24 deprecates
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        tuned = PeftModel.from_pretrained(
            hf_model(tiny_path), str(tmp_path / "fine_tuning" / job.id / "adapter")
        )
    base, trained = _expected(tiny_path, hf_model(tiny_path)), _expected(tiny_path, tuned.merge_and_unload())
    assert trained != base  # the adapter changed the answer
    assert _served(client, done.fine_tuned_model) == trained
    assert _served(client, "tiny") == base
    with pytest.raises(openai.NotFoundError):
        _served(other, done.fine_tuned_model)
