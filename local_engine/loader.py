"""Load a Hugging Face model directory (config.json + safetensors, sharded or not)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from local_engine.config import ModelConfig
from local_engine.gguf_loader import BLOCKS8_FILE, BLOCKS_FILE, unpack_nibbles
from local_engine.models.llama import LlamaForCausalLM
from local_engine.quant import Int4Blocks, Int8Blocks, quantize_model


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
    linear layers if ``quantization`` names a method (``quant.QUANTIZATIONS``). With ``int4``, the
    projections a converted GGUF kept in 4-bit blocks load from those blocks, with ``int8`` those it
    kept in Q8_0 blocks, and their float copies are never read; the head and the embedding table load
    from Q8_0 blocks under either method."""
    path = Path(path)
    cfg = ModelConfig.from_dir(path)
    # Built on the meta device so no time goes into random init of weights we overwrite.
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, max_len)
    blocks: dict[str, Int4Blocks | Int8Blocks] = {}
    if quantization is not None:
        blocks.update(_int8_blocks(path, cfg.num_hidden_layers, device, projections=quantization == "int8"))
    if quantization == "int4":
        blocks.update(_int4_blocks(path, cfg.num_hidden_layers, device))
    # the projections' float copies are not read (the head and table's are: the model is built from them)
    covered = {f"{module}.weight" for module in blocks if module.startswith("model.layers.")}
    state: dict[str, torch.Tensor] = {}
    for f in _safetensors_files(path):
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for name in st.keys():
                if _fused_name(name) not in covered:
                    state[name] = st.get_tensor(name).to(device=device, dtype=dtype)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    _fuse(state, cfg.num_hidden_layers)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [
        k
        for k in result.missing_keys
        if not (cfg.tie_word_embeddings and k == "lm_head.weight") and k not in covered
    ]
    unexpected = [k for k in result.unexpected_keys if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(
            f"weights of {path} do not fit {cfg.model_type}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rotary.to(device)  # built on the CPU, outside the meta device
    if quantization is not None:
        quantize_model(model, quantization, blocks)
    return model.eval()


_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
# Each quantized projection of a layer and the checkpoint weights it is made of.
_PROJECTION_PARTS = {**_FUSED, "self_attn.o_proj": ("self_attn.o_proj",), "mlp.down_proj": ("mlp.down_proj",)}


def _fused_name(name: str) -> str:
    """The engine's name for a checkpoint weight: q/k/v and gate/up live in fused projections."""
    for fused, parts in _FUSED.items():
        for part in parts:
            if f".{part}." in name:
                return name.replace(part, fused)
    return name


def _int4_blocks(path: Path, num_layers: int, device: str) -> dict[str, Int4Blocks]:
    """A converted GGUF's 4-bit projections by fused module name, for the projections all of whose
    parts the file holds in 4 bits (a fused q/k/v with v in another type loads as floats instead)."""
    file = path / BLOCKS_FILE
    if not file.exists():
        return {}
    found: dict[str, Int4Blocks] = {}
    with safe_open(str(file), framework="pt", device="cpu") as st:
        names = set(st.keys())
        for i in range(num_layers):
            for fused, parts in _PROJECTION_PARTS.items():
                stems = [f"model.layers.{i}.{p}.weight" for p in parts]
                if all(f"{stem}.q4" in names for stem in stems):
                    found[f"model.layers.{i}.{fused}"] = Int4Blocks.cat(
                        [
                            Int4Blocks(
                                unpack_nibbles(st.get_tensor(f"{stem}.q4")).to(device),
                                st.get_tensor(f"{stem}.scale").to(device),
                                st.get_tensor(f"{stem}.zero").to(device),
                            )
                            for stem in stems
                        ]
                    )
    return found


def _int8_blocks(
    path: Path, num_layers: int, device: str, projections: bool
) -> dict[str, Int4Blocks | Int8Blocks]:
    """A converted GGUF's Q8_0 weights by module name: the LM head and the embedding table, and with
    ``projections`` every projection all of whose parts the file holds in Q8_0."""
    file = path / BLOCKS8_FILE
    if not file.exists():
        return {}
    found: dict[str, Int4Blocks | Int8Blocks] = {}
    with safe_open(str(file), framework="pt", device="cpu") as st:
        names = set(st.keys())

        def blocks(stems: list[str]) -> Int8Blocks | None:
            if not all(f"{stem}.q8" in names for stem in stems):
                return None
            return Int8Blocks.cat(
                [
                    Int8Blocks(st.get_tensor(f"{stem}.q8").to(device), st.get_tensor(f"{stem}.d8").to(device))
                    for stem in stems
                ]
            )

        modules = {"lm_head": ["lm_head.weight"], "model.embed_tokens": ["model.embed_tokens.weight"]}
        if projections:
            for i in range(num_layers):
                for fused, parts in _PROJECTION_PARTS.items():
                    modules[f"model.layers.{i}.{fused}"] = [f"model.layers.{i}.{p}.weight" for p in parts]
        for module, stems in modules.items():
            if (got := blocks(stems)) is not None:
                found[module] = got
    return found


def _fuse(state: dict[str, torch.Tensor], num_layers: int) -> None:
    for i in range(num_layers):
        for fused, parts in _FUSED.items():
            for kind in ("weight", "bias"):
                names = [f"model.layers.{i}.{p}.{kind}" for p in parts]
                if all(n in state for n in names):
                    state[f"model.layers.{i}.{fused}.{kind}"] = torch.cat([state.pop(n) for n in names])
