"""Weight-only int8 quantization of the linear layers (``engine.quantization: int8``).

Decode on CPU reads every weight once per step, so its speed is bound by memory bandwidth;
int8 weights are a quarter of fp32's bytes. Each output channel (row) of a projection, the
LM head and the embedding table is scaled by ``absmax / 127`` and rounded (symmetric, no zero
point). The model is quantized once after loading (an HF model, or a GGUF dequantized by the
converter), so the rest of the engine sees the same modules with the same call signatures:
LoRA's projection hook wraps an :class:`Int8Linear` as it wraps an ``nn.Linear``.

The matmul reads the packed weights: ``aten._weight_int8pack_mm`` (CPU; it takes bf16
activations, which is why inputs are cast to bf16 and outputs back). That kernel's cost grows
with the number of rows, so a step with many rows (a prefill chunk) instead converts the layer
to bf16 once for that matmul, where the cost is shared by all the rows and AMX/oneDNN's bf16
GEMM is fast (measured on this machine: the packed kernel wins below ~24 rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from local_engine.models.llama import LlamaForCausalLM

QUANTIZATIONS = ("int8",)
# Rows from which a matmul dequantizes the layer instead of calling the row-bound packed kernel.
PACKED_MAX_ROWS = 24
_ACT = torch.bfloat16  # the activation dtype the packed kernel takes


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q [out, in] int8, scale [out] bf16)`` with ``weight ≈ q * scale[:, None]`` per row."""
    w = weight.detach().float()
    # Rounded to bf16 before dividing, so q is computed against the scale the kernel will use.
    scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127).to(_ACT)
    q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


class Int8Linear(nn.Module):
    """``y = x @ (q * scale)^T + bias`` from int8 weights, in the input's dtype."""

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scale = quantize_int8(linear.weight)
        return cls(q, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(_ACT)
        if x2.shape[0] < PACKED_MAX_ROWS and x2.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale)
        else:  # many rows, or a device without the packed kernel: one dequantized matmul
            y = F.linear(x2, self.qweight.to(_ACT) * self.scale[:, None])
        y = y.to(x.dtype).reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias


class Int8Embedding(nn.Module):
    """Embedding lookup from an int8 table (per-row scales): with tied embeddings it is the LM head's."""

    def __init__(self, table: Int8Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.table = table
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = self.table
        return (t.qweight[ids].to(self.dtype) * t.scale[ids].to(self.dtype).unsqueeze(-1)).to(self.dtype)


# The projections of a decoder layer: (submodule, attribute), the same four LoRA wraps.
PROJECTIONS = (
    ("self_attn", "qkv_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_up_proj"),
    ("mlp", "down_proj"),
)


def quantize_model(model: LlamaForCausalLM, method: str) -> None:
    """Replace ``model``'s projections, LM head and embedding table with int8 ones, in place."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"unsupported quantization {method!r} ({', '.join(QUANTIZATIONS)})")
    for layer in model.model.layers:
        for owner_name, name in PROJECTIONS:
            owner = getattr(layer, owner_name)
            setattr(owner, name, Int8Linear.from_linear(getattr(owner, name)))
    body = model.model
    embed = body.embed_tokens
    dtype = embed.weight.dtype
    head = Int8Linear.from_linear(model.lm_head)
    tied = model.lm_head.weight is embed.weight
    table = head if tied else Int8Linear(*quantize_int8(embed.weight), None)
    body.embed_tokens = Int8Embedding(table, dtype)  # type: ignore[assignment]
    model.lm_head = head  # type: ignore[assignment]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights (parameters and persistent buffers), a tied tensor counted once."""
    seen: set[int] = set()
    total = 0
    for t in model.state_dict().values():
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


@torch.inference_mode()
def prompt_logits(model: LlamaForCausalLM, token_ids: list[int], block_size: int = 16) -> torch.Tensor:
    """The logits after each of ``token_ids`` (``[len, vocab]``), in one prefill over a private paged cache."""
    from local_engine.attention import build_metadata

    cfg = model.config
    n = len(token_ids)
    blocks = -(-n // block_size)
    dtype = model.model.norm.weight.dtype
    device = model.model.norm.weight.device
    shape = (blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
    kv = [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(cfg.num_hidden_layers)
    ]
    meta = build_metadata([n], [n], [list(range(blocks))], block_size, device)
    hidden = model(torch.tensor(token_ids, device=device), torch.arange(n, device=device), kv, meta)
    return model.logits(hidden)


def perplexity(model: LlamaForCausalLM, token_ids: list[int]) -> float:
    """``exp`` of the mean next-token negative log-likelihood of ``token_ids`` under ``model``: how
    quantization's quality is measured against full weights."""
    logprobs = prompt_logits(model, token_ids)[:-1].log_softmax(-1)
    nll = -logprobs.gather(1, torch.tensor(token_ids[1:])[:, None]).mean()
    return float(nll.exp())
