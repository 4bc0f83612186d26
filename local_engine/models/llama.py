"""Llama-family decoder (Llama 2/3, SmolLM2, Qwen2, Mistral) over a paged KV cache.

Parameter names follow Hugging Face's, except that q/k/v and gate/up projections are
fused into one matrix each (fewer, larger matmuls); the loader concatenates them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from local_engine import kernels
from local_engine.attention import AttentionMetadata, paged_attention
from local_engine.config import ModelConfig


def _hooked(m: nn.Module) -> bool:
    """Whether calling ``m`` runs more than its ``forward``: hooks on it or on every module (the checks
    of ``nn.Module.__call__``'s fast path)."""
    return bool(
        m._forward_hooks
        or m._forward_pre_hooks
        or m._backward_hooks
        or m._backward_pre_hooks
        or _module._global_forward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_backward_hooks
        or _module._global_backward_pre_hooks
    )


def call_module(m: nn.Module) -> Callable[..., Any]:
    """``m.forward`` where nothing hooks ``m``, else ``m``: a decode step makes ~10 module calls a layer,
    and ``nn.Module.__call__``'s own checks cost about a µs each (1 thread, SmolLM2: ~1 ms of an int8
    step's ~11 ms outside its matmuls)."""
    return m if _hooked(m) else m.forward


def _fusable(x: torch.Tensor) -> bool:
    """Whether the compiled small ops (:mod:`local_engine.kernels`) may take ``x``: float32 on the CPU,
    rows of unit stride, no autograd (they have no backward)."""
    return (
        x.dtype is torch.float32
        and x.device.type == "cpu"
        and x.dim() == 2
        and x.stride(1) == 1
        and not torch.is_grad_enabled()
    )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # One fused op instead of six; in float32 it is bit-identical to the formula below. (In
            # bfloat16 it rounds once where transformers rounds twice, so that formula stays for it.)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def add_rms_norm(x: torch.Tensor, d: torch.Tensor | None, norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, norm(s))`` with ``s = x + d`` (``x`` where ``d`` is None): the residual add and the RMSNorm after
    it in one compiled call (``kernels.add_rms_norm``, 3 torch ops and their dispatch otherwise) where it was
    found bit-identical to them for this width (checked once at first use), else torch's ops."""
    lib = kernels.library()
    if (
        lib is not None
        and _fusable(x)
        and (d is None or (_fusable(d) and d.shape == x.shape))
        and norm.weight.dtype is torch.float32
        and not _hooked(norm)
        and kernels.add_rms_norm_ok(x.shape[1], norm.eps)
    ):
        return kernels.add_rms_norm(lib, x, d, norm.weight, norm.eps)
    s = x if d is None else x + d
    return s, call_module(norm)(s)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    kind = s.get("rope_type", s.get("type"))
    if kind == "linear":
        return inv_freq / float(s["factor"])
    # llama3: keep high frequencies, divide low ones by `factor`, blend in between.
    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, cfg: ModelConfig, max_len: int) -> None:
        super().__init__()
        # The tables are computed on the CPU and move with the model (``.to``): the loader builds the model on the
        # meta device, where these ops would run through torch's reference ops, whose first use imports
        # torch._dynamo (1.7 s of CPU in every engine process).
        with torch.device("cpu"):
            freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), rope_inv_freq(cfg))
            emb = torch.cat((freqs, freqs), dim=-1)
            sin = emb.sin()
            half = sin.shape[-1] // 2
            self.register_buffer("cos", emb.cos(), persistent=False)
            # sin with the sign of rotate_half folded in (see apply_rope).
            self.register_buffer("sin", torch.cat((-sin[:, :half], sin[:, half:]), dim=-1), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for ``positions``, ``[T, 1, head_dim]``: looked up once per step, used by every layer."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding of ``x`` [T, heads, head_dim] (the query and key heads at once).

    HF's ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)``: the halves are
    swapped by a ``roll`` and the minus sign lives in the table's sin (``-a * b == a * -b`` exactly,
    so the result is bit-identical), four ops per layer instead of ten on one step's few tokens."""
    cos, signed_sin = rope
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim**-0.5
        h, d = cfg.hidden_size, cfg.head_dim
        # q, k and v in one matmul (the loader concatenates HF's q_proj/k_proj/v_proj).
        self.q_size, self.kv_size = self.num_heads * d, self.num_kv_heads * d
        self.qkv_proj = nn.Linear(h, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        # Qwen2 has q/k/v biases but none on o_proj.
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=cfg.attention_bias and cfg.model_type != "qwen2")

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = call_module(self.qkv_proj)(x)
        lib = kernels.library()
        cos, sin = rope
        if (
            lib is not None
            and _fusable(qkv)
            and kv[0].dtype is torch.float32
            and kv[0].is_contiguous()
            and kv[1].is_contiguous()
            and cos.is_contiguous()
            and sin.is_contiguous()
            and kernels.rope_kv_ok(self.num_heads, self.num_kv_heads, self.head_dim)
        ):
            # RoPE of q and k and the K/V cache's writes in one compiled call (bit-identical to the ops
            # below, checked once per shape), so paged_attention has nothing to write.
            q = kernels.rope_kv(
                lib, qkv, self.num_heads, self.num_kv_heads, cos, sin, meta.slot_mapping, kv[0], kv[1]
            )
            o = paged_attention(q, None, None, kv[0], kv[1], meta, self.scale)
        else:
            qk_size = self.q_size + self.kv_size
            # q's and k's heads rotated together, in one pass of apply_rope.
            qk = apply_rope(qkv[:, :qk_size].view(t, self.num_heads + self.num_kv_heads, self.head_dim), rope)
            q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
            v = qkv[:, qk_size:].view(t, self.num_kv_heads, self.head_dim)
            o = paged_attention(q, k, v, kv[0], kv[1], meta, self.scale)
        return call_module(self.o_proj)(o.reshape(t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_up_proj = nn.Linear(h, 2 * i, bias=b)  # gate_proj and up_proj, concatenated
        self.down_proj = nn.Linear(i, h, bias=b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = call_module(self.gate_up_proj)(x).chunk(2, dim=-1)
        if torch.is_grad_enabled():
            return self.down_proj(F.silu(gate) * up)
        # Without autograd, in place in the fused matmul's output (views of its halves): no new tensors.
        return call_module(self.down_proj)(F.silu(gate, inplace=True).mul_(up))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, kv, meta)
        return x + self.mlp(self.post_attention_layernorm(x))

    def step(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        next_norm: RMSNorm,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s output ``y`` and ``next_norm(y)``, given ``h = input_layernorm(x)``: each residual
        add fused with the norm after it (:func:`add_rms_norm`), the submodules' ``forward`` called directly
        where nothing hooks them."""
        x, h = add_rms_norm(x, call_module(self.self_attn)(h, rope, kv, meta), self.post_attention_layernorm)
        return add_rms_norm(x, call_module(self.mlp)(h), next_norm)


class LlamaBody(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # Given a weight, the table skips its random init, which on the meta device (the loader's) would also run
        # through torch's reference ops (see RotaryEmbedding).
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Decoder whose ``forward`` takes a flat batch of tokens and returns final hidden states."""

    def __init__(self, cfg: ModelConfig, max_len: int) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaBody(cfg)
        self.rotary = RotaryEmbedding(cfg, max_len)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        body = self.model
        x = call_module(body.embed_tokens)(input_ids)
        rope = call_module(self.rotary)(positions, x.dtype)
        layers: list[DecoderLayer] = list(body.layers._modules.values())  # type: ignore[arg-type]
        norms = ([layer.input_layernorm for layer in layers[1:]] + [body.norm])[: len(layers)]
        h = None  # the next layer's input_layernorm(x), computed with the residual add before it
        for layer, kv, next_norm in zip(layers, kv_caches, norms, strict=True):
            if _hooked(layer):
                x, h = layer(x, rope, kv, meta), None
                continue
            if h is None:
                _, h = add_rms_norm(x, None, layer.input_layernorm)
            x, h = layer.step(x, h, next_norm, rope, kv, meta)
        return call_module(body.norm)(x) if h is None else h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
