"""Engine and model configuration (typed, validated once at construction)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Architecture hyper-parameters of a Llama-family decoder, read from an HF ``config.json``."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        model_type = d.get("model_type", "llama")
        if model_type not in ("llama", "qwen2", "mistral"):
            raise ValueError(f"unsupported model_type {model_type!r} (llama, qwen2, mistral)")
        heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        # transformers 5 writes rope_parameters; older checkpoints carry rope_theta + rope_scaling.
        rope = dict(d.get("rope_parameters") or {})
        theta = float(rope.pop("rope_theta", d.get("rope_theta", 10000.0)))
        scaling = d.get("rope_scaling") or (rope if rope else None)
        if scaling is not None:
            scaling = dict(scaling)
            rope_type = scaling.get("rope_type", scaling.get("type", "default"))
            if rope_type == "default":
                scaling = None
            elif rope_type not in ("llama3", "linear"):
                raise ValueError(f"unsupported rope scaling {rope_type!r} (llama3, linear)")
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        return cls(
            model_type=model_type,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases; its config does not say so.
            attention_bias=bool(d.get("attention_bias", model_type == "qwen2")),
            mlp_bias=bool(d.get("mlp_bias", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads((Path(path) / "config.json").read_text()))


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    """Speculative decoding: a proposer guesses ``num_tokens`` next tokens, one target step checks them.

    ``ngram`` looks the sequence's last n-gram up in its own earlier tokens (prompt lookup, no
    extra model); ``draft`` runs ``draft_model`` (a smaller model sharing the target's tokenizer:
    an HF directory, a ``.gguf`` or ``smollm2``) for ``num_tokens`` guesses. A sequence stops speculating once its acceptance rate, measured over at least
    ``min_proposed`` proposed tokens, falls below ``min_acceptance``.
    """

    method: str = "ngram"
    num_tokens: int = 4
    ngram_max: int = 4
    ngram_min: int = 2
    min_acceptance: float = 0.3
    min_proposed: int = 24
    draft_model: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("ngram", "draft"):
            raise ValueError(f"unsupported speculative method {self.method!r} (ngram, draft)")
        if (self.method == "draft") != (self.draft_model is not None):
            raise ValueError("speculative draft_model is required with method draft, and only with it")
        if not 1 <= self.num_tokens <= 16:
            raise ValueError("speculative num_tokens must be in [1, 16]")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError("speculative ngram_min must be in [1, ngram_max]")
        if not 0 <= self.min_acceptance <= 1:
            raise ValueError("speculative min_acceptance must be in [0, 1]")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Knobs of the engine: cache size, batching limits, device and dtype."""

    block_size: int = 16
    num_kv_blocks: int | None = None  # None: derive from kv_cache_bytes
    kv_cache_bytes: int = 1 << 30
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    # While a sequence of a better priority runs or waits, at most this many of worse priority (a
    # gateway's batch lines beside live requests) take part in a step, and only to decode; None:
    # worse priorities fill whatever room a step has left.
    max_background_seqs: int | None = 0
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    num_threads: int | None = None
    speculative: SpeculativeConfig | None = None  # a dict (from a YAML config) is converted
    quantization: str | None = None  # "int8" | "int4": weight-only quantized linear layers (quant.py)
    max_loras: int = 4  # LoRA adapters resident at once (docs/lora.md); 0: no adapters
    max_lora_rank: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.speculative, dict):
            object.__setattr__(self, "speculative", SpeculativeConfig(**self.speculative))
        if self.quantization not in (None, "int8", "int4"):
            raise ValueError(f"unsupported quantization {self.quantization!r} (int8, int4)")
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a positive power of two")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise ValueError("num_kv_blocks must be >= 2")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        if self.max_background_seqs is not None and self.max_background_seqs < 0:
            raise ValueError("max_background_seqs must be >= 0")
        if self.max_loras < 0 or self.max_lora_rank < 1:
            raise ValueError("max_loras must be >= 0 and max_lora_rank >= 1")

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is None:
            return torch.float32 if self.device == "cpu" else torch.bfloat16
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]
