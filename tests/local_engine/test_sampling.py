"""max_tokens, stop strings and ids, seeds, logprobs and the sampling filters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from local_engine import LLM, SamplingParams
from local_engine.sampler import sample
from local_engine.sequence import Sequence


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(tiny_llama, block_size=4, num_kv_blocks=256)


PROMPT = "the quick brown fox"


def test_max_tokens_stops_with_length(llm: LLM) -> None:
    out = llm.generate(PROMPT, SamplingParams(max_tokens=7, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 7 and out.finish_reason == "length"


def test_stop_token_id_ends_with_stop(llm: LLM) -> None:
    free = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0]
    target = free.token_ids[5]
    first = free.token_ids.index(target)
    out = llm.generate(
        PROMPT, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop_token_ids=(target,))
    )[0]
    assert out.finish_reason == "stop" and out.token_ids == free.token_ids[: first + 1]


def test_stop_string_truncates_text(llm: LLM) -> None:
    free = llm.generate(PROMPT, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))[0]
    assert len(free.text) > 6
    stop = free.text[3:6]
    out = llm.generate(PROMPT, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=stop))[0]
    assert out.finish_reason == "stop"
    assert out.text == free.text[: free.text.index(stop)]
    kept = llm.generate(
        PROMPT,
        SamplingParams(
            max_tokens=20, temperature=0, ignore_eos=True, stop=[stop], include_stop_str_in_output=True
        ),
    )[0]
    assert kept.text == free.text[: free.text.index(stop) + len(stop)]


def test_stop_strings_are_never_streamed(tiny_llama: Path) -> None:
    from local_engine import EngineConfig, LLMEngine

    engine = LLMEngine(tiny_llama, EngineConfig(block_size=4, num_kv_blocks=64))
    ref = LLM(tiny_llama, block_size=4, num_kv_blocks=64).generate(
        PROMPT, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    )[0]
    stop = ref.text[4:7]
    engine.add_request(
        "s", PROMPT, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=[stop])
    )
    streamed = ""
    while engine.has_unfinished():
        for out in engine.step():
            streamed += out.text
            assert stop not in streamed
    assert streamed == ref.text[: ref.text.index(stop)]


def test_same_seed_same_text_and_other_seed_differs(llm: LLM) -> None:
    def run(seed: int) -> list[int]:
        return llm.generate(
            PROMPT, SamplingParams(max_tokens=16, temperature=1.5, seed=seed, ignore_eos=True)
        )[0].token_ids

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c
    # Seeded requests keep their text when batched with other traffic.
    mixed = llm.generate(
        [PROMPT, "continuous batching", PROMPT],
        [
            SamplingParams(max_tokens=16, temperature=1.5, seed=7, ignore_eos=True),
            SamplingParams(max_tokens=16, temperature=1.5, ignore_eos=True),
            SamplingParams(max_tokens=16, temperature=0, ignore_eos=True),
        ],
    )
    assert mixed[0].token_ids == a


def test_logprobs_are_log_softmax_of_the_model(llm: LLM) -> None:
    out = llm.generate(PROMPT, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=3))[0]
    assert out.logprobs is not None and len(out.logprobs) == 5
    for lp, token in zip(out.logprobs, out.token_ids, strict=True):
        assert lp.token_id == token
        assert len(lp.top) == 3
        # greedy: the chosen token is the most likely one
        assert lp.top[0][0] == token and math.isclose(lp.top[0][1], lp.logprob, rel_tol=1e-6)
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
        assert lp.logprob <= 0
    none = llm.generate(PROMPT, SamplingParams(max_tokens=2, temperature=0))[0]
    assert none.logprobs is None


def _seq(**kw: object) -> Sequence:
    return Sequence("x", [1, 2, 3], SamplingParams(**kw))  # type: ignore[arg-type]


def test_top_k_top_p_min_p_keep_only_allowed_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    for _ in range(50):
        tokens, _ = sample(logits.clone(), [_seq(top_k=1), _seq(top_p=0.7), _seq(min_p=0.5)])
        assert tokens[0] == 0
        assert tokens[1] in (0, 1)
        assert tokens[2] in (0, 1)


def test_penalties_change_the_greedy_choice() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 5.0, 4.9]])
    seq = _seq(temperature=0, repetition_penalty=1.5)
    seq.token_ids.append(3)  # token 3 already generated
    assert sample(logits.clone(), [seq])[0] == [4]
    seq = _seq(temperature=0, presence_penalty=0.5)
    seq.token_ids.append(3)
    assert sample(logits.clone(), [seq])[0] == [4]
    seq = _seq(temperature=0, frequency_penalty=0.06)
    seq.token_ids.extend([3, 3])
    assert sample(logits.clone(), [seq])[0] == [4]
    assert sample(logits.clone(), [_seq(temperature=0)])[0] == [3]


@pytest.mark.parametrize(
    "kw", [{"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"logprobs": 21}, {"stop": [""]}]
)
def test_invalid_params_are_rejected(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kw)  # type: ignore[arg-type]


def test_n_completions_share_the_prompt_blocks(tiny_llama: Path) -> None:
    llm = LLM(tiny_llama, block_size=4, num_kv_blocks=256)
    prompt = "a paged cache keeps keys and values in fixed size blocks"
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    single = llm.generate(prompt, greedy)[0]
    llm2 = LLM(tiny_llama, block_size=4, num_kv_blocks=256)  # cold cache: sharing must come from siblings
    outs = llm2.generate(prompt, SamplingParams(n=3, max_tokens=8, temperature=0, ignore_eos=True))
    assert [o.index for o in outs] == [0, 1, 2]
    assert all(o.token_ids == single.token_ids for o in outs)
    full_blocks = (len(single.prompt_token_ids) - 1) // 4 * 4
    assert [o.cached_tokens for o in outs] == [0, full_blocks, full_blocks]
    sampled = llm2.generate(
        prompt, SamplingParams(n=3, max_tokens=8, temperature=1.5, seed=5, ignore_eos=True)
    )
    again = llm2.generate(prompt, SamplingParams(n=3, max_tokens=8, temperature=1.5, seed=5, ignore_eos=True))
    assert [o.token_ids for o in sampled] == [o.token_ids for o in again]
    assert len({tuple(o.token_ids) for o in sampled}) > 1
