"""Chat templates rendered as transformers does; incremental detokenization never splits a character."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_engine.detokenizer import IncrementalDetokenizer
from local_engine.tokenizer import Tokenizer

TEXT = "héllo wörld ✓ 日本語 テキスト the quick brown fox"


def test_chat_template_matches_transformers(smollm2_path: Path, tiny_llama: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    for path in (smollm2_path, tiny_llama):
        ours = Tokenizer(path)
        ref = PreTrainedTokenizerFast.from_pretrained(str(path))
        for gen in (True, False):
            expected = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == expected
        assert ours.encode(TEXT, add_special_tokens=False) == ref(TEXT, add_special_tokens=False).input_ids


def test_incremental_detokenization_round_trips(tiny_llama: Path) -> None:
    tok = Tokenizer(tiny_llama)
    ids = tok.encode(TEXT, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode("prompt", add_special_tokens=False))
    deltas = [detok.add(i) for i in ids]
    assert "".join(deltas) == TEXT
    assert all("\ufffd" not in d for d in deltas)


def test_detokenizer_waits_for_multibyte_characters(smollm2_path: Path) -> None:
    tok = Tokenizer(smollm2_path)
    ids = tok.encode(TEXT, add_special_tokens=False)
    # SmolLM2 splits CJK characters across several byte tokens: some steps must emit nothing.
    singles = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in s for s in singles)
    prompt = tok.encode("Say:", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt)
    deltas = [detok.add(i) for i in ids]
    assert "".join(deltas) == TEXT
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas


@pytest.mark.parametrize("messages", [[{"role": "user", "content": "x"}]])
def test_model_without_template_raises(
    tiny_llama: Path, tmp_path: Path, messages: list[dict[str, str]]
) -> None:
    (tmp_path / "tokenizer.json").write_bytes((tiny_llama / "tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(tmp_path).apply_chat_template(messages)


def test_special_tokens_are_skipped_unless_asked_for(tiny_llama: Path) -> None:
    tok = Tokenizer(tiny_llama)
    end = tok.encode("<|im_end|>", add_special_tokens=False)
    assert len(end) == 1
    assert IncrementalDetokenizer(tok, []).add(end[0]) == ""
    assert IncrementalDetokenizer(tok, [], skip_special_tokens=False).add(end[0]) == "<|im_end|>"
