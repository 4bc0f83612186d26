"""Load a Hugging Face model directory (config.json + safetensors, sharded or not)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from local_engine.config import ModelConfig
from local_engine.models.llama import LlamaForCausalLM, RotaryEmbedding
from local_engine.quant import quantize_model


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    return files


def load_model(
    path: str | Path,
    max_len: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantization: str | None = None,
) -> LlamaForCausalLM:
    """Build the model for ``path`` and load its weights in ``dtype`` on ``device``, then quantize its
    linear layers if ``quantization`` names a method (``quant.QUANTIZATIONS``)."""
    path = Path(path)
    cfg = ModelConfig.from_dir(path)
    # Built on the meta device so no time goes into random init of weights we overwrite.
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, max_len)
    state: dict[str, torch.Tensor] = {}
    for f in _safetensors_files(path):
        for name, t in load_file(str(f), device="cpu").items():
            state[name] = t.to(device=device, dtype=dtype)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    _fuse(state, cfg.num_hidden_layers)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    unexpected = [k for k in result.unexpected_keys if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(
            f"weights of {path} do not fit {cfg.model_type}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rotary = RotaryEmbedding(cfg, max_len).to(device)
    if quantization is not None:
        quantize_model(model, quantization)
    return model.eval()


_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def _fuse(state: dict[str, torch.Tensor], num_layers: int) -> None:
    for i in range(num_layers):
        for fused, parts in _FUSED.items():
            for kind in ("weight", "bias"):
                names = [f"model.layers.{i}.{p}.{kind}" for p in parts]
                if all(n in state for n in names):
                    state[f"model.layers.{i}.{fused}.{kind}"] = torch.cat([state.pop(n) for n in names])
