"""Convert a GGUF file (llama / qwen2 architectures) into a Hugging Face style directory.

Tensors are dequantized with the ``gguf`` package to float32. llama.cpp's converter
permutes the rows of Llama's q/k projections (interleaved RoPE); we undo that so the
same model code serves both formats.

4-bit blocks (Q4_0, Q4_1, Q4_K) of the layers' projections are also written as they are, in
``gguf_blocks/int4.safetensors`` (values, and one scale and offset per 32 inputs), so that
``quantization: int4`` serves the file's own weights instead of rounding the float32 copy again.
Q8_0 blocks (of the projections, the embedding table and the LM head) go to
``gguf_blocks/int8.safetensors`` (int8 values and one float16 scale per 32 inputs) for the same reason:
``quantization: int8`` serves them as they are, and the head and table kept at 8 bits under either
method are the file's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_TOKEN_TYPE_CONTROL = 3
BLOCKS_FILE = "gguf_blocks/int4.safetensors"  # beside model.safetensors; not a *.safetensors of the dir
BLOCKS8_FILE = "gguf_blocks/int8.safetensors"  # Q8_0 blocks: ``<name>.q8`` int8, ``<name>.d8`` float16
_TOKEN_TYPE_USER_DEFINED = 4


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    if name.startswith("blk."):
        _, idx, rest = name.split(".", 2)
        if rest in _LAYER_NAMES:
            return f"model.layers.{idx}.{_LAYER_NAMES[rest]}"
    return None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def q4_blocks(data: np.ndarray, kind: str, rows: int, cols: int) -> dict[str, np.ndarray] | None:
    """A Q4_0 / Q4_1 / Q4_K tensor's raw blocks as ``q`` [rows, cols] (0..15) with ``scale`` and
    ``zero`` [rows, cols / 32] (float32) such that ``w = (q - 8) * scale + zero``, the form of
    :class:`local_engine.quant.Int4Blocks`. None for any other block type."""
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(rows, -1)
    if kind in ("Q4_0", "Q4_1"):
        head = 2 if kind == "Q4_0" else 4
        b = raw.reshape(rows, cols // 32, head + 16)  # per 32 inputs: d (f16)[, m (f16)], 16 bytes
        d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        nib = b[..., head:]
        q = np.concatenate([nib & 15, nib >> 4], axis=-1)  # inputs 0..15 low nibbles, 16..31 high
        if kind == "Q4_0":  # w = d * (q - 8)
            zero = np.zeros_like(d)
        else:  # w = d * q + m
            zero = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) + 8 * d
        return {"q": q.reshape(rows, cols), "scale": d, "zero": zero}
    if kind == "Q4_K":
        # Per 256 inputs: d, dmin (f16), 12 bytes of eight 6-bit scales and mins, 128 bytes of
        # nibbles: each 32 bytes hold sub-block 2c in low nibbles and 2c+1 in high ones.
        b = raw.reshape(rows, cols // 256, 144)
        d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        dmin = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        sc6 = b[..., 4:16]
        lo, mid, top = sc6[..., 0:4], sc6[..., 4:8], sc6[..., 8:12]
        scales = np.concatenate([lo & 63, (top & 15) | ((lo >> 6) << 4)], axis=-1).astype(np.float32)
        mins = np.concatenate([mid & 63, (top >> 4) | ((mid >> 6) << 4)], axis=-1).astype(np.float32)
        nib = b[..., 16:].reshape(rows, cols // 256, 4, 1, 32)
        q = np.concatenate([nib & 15, nib >> 4], axis=3)  # [rows, supers, 4, 2, 32]
        scale = (d[..., None] * scales).reshape(rows, cols // 32)
        zero = (8 * d[..., None] * scales - dmin[..., None] * mins).reshape(rows, cols // 32)
        return {"q": q.reshape(rows, cols), "scale": scale, "zero": zero}
    return None


def q8_blocks(data: np.ndarray, kind: str, rows: int, cols: int) -> dict[str, np.ndarray] | None:
    """A Q8_0 tensor's raw blocks as ``q8`` [rows, cols] int8 and ``d8`` [rows, cols / 32] float16,
    ``w = q8 * d8`` per 32 inputs (the form of :class:`local_engine.quant.Int8Blocks`). None for any
    other block type."""
    if kind != "Q8_0":
        return None
    b = np.ascontiguousarray(data).view(np.uint8).reshape(rows, cols // 32, 34)  # d (f16), 32 x int8
    d = b[..., 0:2].copy().view(np.float16)[..., 0]
    q = b[..., 2:].copy().view(np.int8).reshape(rows, cols)
    return {"q8": q, "d8": d}


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The ``q`` of a blocks file's ``<name>.q4`` entry: two inputs a byte, the even one low."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json into ``out_dir``."""
    import gguf  # imported here: only conversion needs it

    reader = gguf.GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"GGUF architecture {arch!r} is not supported (llama, qwen2)")

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ValueError(
            "GGUF files with llama3 RoPE frequency factors are not supported yet; use the HF directory"
        )
    n_head = int(meta("attention.head_count"))
    n_kv = int(meta("attention.head_count_kv", n_head))
    hidden = int(meta("embedding_length"))
    state: dict[str, torch.Tensor] = {}
    blocks: dict[str, torch.Tensor] = {}
    blocks8: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape)])  # GGUF lists dims innermost first
        heads = None
        if arch == "llama" and t.name.endswith("attn_q.weight"):
            heads = n_head
        elif arch == "llama" and t.name.endswith("attn_k.weight"):
            heads = n_kv
        if heads is not None:
            w = _unpermute(w, heads)
        state[name] = torch.from_numpy(np.ascontiguousarray(w))
        if name.startswith("model.layers.") and w.ndim == 2:
            q4 = q4_blocks(t.data, t.tensor_type.name, *w.shape)
            if q4 is not None:
                for key, value in q4.items():
                    value = _unpermute(value, heads) if heads is not None else value
                    value = _pack_nibbles(value) if key == "q" else value
                    blocks[f"{name}.{'q4' if key == 'q' else key}"] = torch.from_numpy(
                        np.ascontiguousarray(value)
                    )
        if w.ndim == 2:
            q8 = q8_blocks(t.data, t.tensor_type.name, *w.shape)
            for key, value in (q8 or {}).items():
                value = _unpermute(value, heads) if heads is not None else value
                blocks8[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
    tied = "lm_head.weight" not in state
    tokens: list[str] = list(_field(reader, "tokenizer.ggml.tokens"))
    vocab_size = int(meta("vocab_size", len(tokens)))
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    config = {
        "model_type": arch,
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": int(meta("rope.dimension_count", hidden // n_head)),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta("context_length", 4096)),
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    for file, kept in ((BLOCKS_FILE, blocks), (BLOCKS8_FILE, blocks8)):
        if kept:
            (out / file).parent.mkdir(exist_ok=True)
            save_file(kept, str(out / file))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(reader, tokens, out, bos, eos)
    return out


def _write_tokenizer(reader: Any, tokens: list[str], out: Path, bos: int | None, eos: int | None) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"GGUF tokenizer model {model!r} is not supported (gpt2 byte-level BPE)")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    # SmolLM/StarCoder-style vocabularies split every digit on its own before byte-level BPE.
    if pre in ("smollm", "starcoder", "refact"):
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = list(_field(reader, "tokenizer.ggml.token_type", []))
    special = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i, ty in enumerate(types)
        if ty in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)
    ]
    tok.add_special_tokens(special)
    tok.save(str(out / "tokenizer.json"))
    tcfg = {
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "chat_template": _field(reader, "tokenizer.chat_template"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2))
