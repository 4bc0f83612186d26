"""Draft-model speculation: a smaller model guesses, the target decides; output as without it."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from local_engine import LLM, SamplingParams
from local_engine.sampler import filter_logits
from local_engine.sequence import Sequence
from tests.harness import reference_model
from tests.local_engine.test_equivalence import _check_greedy_identical, _repeating_requests
from tests.local_engine.test_speculative import _chi_square_p


def _draft_of(target: Path, out: Path, flip: bool = False) -> Path:
    """A one-layer model cut from ``target`` (same tokenizer, other KV shape): it agrees with the
    target often but not always. ``flip`` negates its final norm, so it guesses the target's least
    likely tokens (a draft that never helps)."""
    shutil.copytree(target, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (out / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(out / "model.safetensors"))
    state = {
        k: v for k, v in state.items() if not k.startswith("model.layers.") or k.startswith("model.layers.0.")
    }
    if flip:
        state["model.norm.weight"] = -state["model.norm.weight"]
    save_file(state, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def draft_pair(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_model, _draft_of(tiny_model, tmp_path_factory.mktemp("draft") / tiny_model.name)


def _spec(draft: Path, **kw: object) -> dict[str, object]:
    return {"method": "draft", "draft_model": str(draft), "num_tokens": 3, "min_acceptance": 0.0, **kw}


@pytest.mark.parametrize(
    ("num_kv_blocks", "max_batched"), [(512, 64), (24, 64)], ids=["batched", "preempted"]
)
def test_greedy_identical_with_a_draft_model(
    draft_pair: tuple[Path, Path], num_kv_blocks: int, max_batched: int
) -> None:
    target, draft = draft_pair
    llm = LLM(
        target,
        block_size=4,
        num_kv_blocks=num_kv_blocks,
        max_num_batched_tokens=max_batched,
        speculative=_spec(draft),
    )
    _check_greedy_identical(target, _repeating_requests(9), llm)
    m = llm.engine.metrics
    # The cut-down draft is right part of the time: both accepted and rejected guesses were checked.
    assert 0 < m.spec_accepted_tokens_total < m.spec_draft_tokens_total
    assert (llm.engine.scheduler.num_preemptions > 0) == (num_kv_blocks == 24)
    assert llm.engine.block_manager.num_used_blocks == 0
    drafter = llm.engine.drafter
    assert drafter is not None
    llm.engine.step()  # the next step's proposal round frees what finished sequences held
    assert not drafter.states and len(drafter.free_blocks) == drafter.kv_caches[0][0].shape[0]


@pytest.mark.timeout(900)
def test_sampled_outputs_follow_the_targets_distribution(tiny_llama: Path, tmp_path: Path) -> None:
    """Token 2 (the first one a draft proposes) over 800 seeded samples, chi-square against the target."""

    draft = _draft_of(tiny_llama, tmp_path / "draft")
    prompt = [random.Random(21).randrange(5, 500) for _ in range(10)]
    llm = LLM(
        tiny_llama,
        block_size=4,
        num_kv_blocks=2048,
        max_num_seqs=256,
        max_num_batched_tokens=2048,
        speculative=_spec(draft),
    )
    params = [
        SamplingParams(max_tokens=3, temperature=0.8, top_k=8, seed=s, ignore_eos=True) for s in range(800)
    ]
    outs = llm.generate([prompt] * len(params), params)
    m = llm.engine.metrics
    assert 0 < m.spec_accepted_tokens_total < m.spec_draft_tokens_total
    firsts = [o.token_ids[0] for o in outs]
    mode = max(set(firsts), key=firsts.count)
    hf = reference_model(tiny_llama)
    with torch.no_grad():
        logits = hf(torch.tensor([[*prompt, mode]])).logits[0, -1:]
    target = filter_logits(logits, [Sequence("r", prompt, params[0])]).softmax(-1)[0]
    counts = torch.zeros(logits.shape[1])
    for o in outs:
        if o.token_ids[0] == mode:
            counts[o.token_ids[1]] += 1
    assert counts.sum() >= 150
    assert _chi_square_p(counts, target) > 1e-3


def test_a_draft_that_never_helps_switches_itself_off(tiny_llama: Path, tmp_path: Path) -> None:
    bad = _draft_of(tiny_llama, tmp_path / "bad", flip=True)
    prompts = _repeating_requests(10)[:4]
    params = [SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)] * len(prompts)

    def drafted(min_acceptance: float) -> int:
        llm = LLM(
            tiny_llama,
            block_size=4,
            num_kv_blocks=256,
            speculative=_spec(bad, min_acceptance=min_acceptance, min_proposed=6),
        )
        llm.generate([p for p, _ in prompts], params)
        return llm.engine.metrics.spec_draft_tokens_total

    always, adaptive = drafted(0.0), drafted(0.5)
    # Each sequence stops after its first 6 proposed tokens (plus one draft of at most 3).
    assert adaptive <= 4 * (6 + 3) < always


def test_draft_model_config_is_checked() -> None:
    from local_engine.config import SpeculativeConfig

    with pytest.raises(ValueError, match="draft_model"):
        SpeculativeConfig(method="draft")
    with pytest.raises(ValueError, match="draft_model"):
        SpeculativeConfig(method="ngram", draft_model="x")
