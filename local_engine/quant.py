"""Weight-only quantization of the linear layers (``engine.quantization: int8 | int4``).

Decode on CPU reads every weight once per step, so its speed is bound by memory bandwidth;
int8 weights are a quarter of fp32's bytes. Each output channel (row) of a projection, the
LM head and the embedding table is scaled by ``absmax / 127`` and rounded (symmetric, no zero
point). The model is quantized once after loading (an HF model, or a GGUF dequantized by the
converter), so the rest of the engine sees the same modules with the same call signatures:
LoRA's projection hook wraps an :class:`Int8Linear` as it wraps an ``nn.Linear``.

Without our kernels (below) the matmul reads the packed weights through
``aten._weight_int8pack_mm`` (CPU; it takes bf16 activations, which is why inputs are cast to bf16
and outputs back). That kernel's cost grows with the number of rows, so a step with many rows (a
prefill chunk) instead converts the layer once for that matmul, where the cost is shared by all the
rows: to bf16 on a GPU or a CPU with AMX, whose bf16 GEMM is fast (measured on an AMX machine: the
packed kernel wins below ~24 rows), to float32 on other CPUs, where torch's bf16 GEMM is several times
slower than float32's (:func:`_many_rows`).

int4 is group-wise and asymmetric, in the layout of llama.cpp's Q4_0 / Q4_1 / Q4_K blocks: every
32 consecutive inputs of a row share a scale and an offset, ``w = (q - 8) * scale + zero`` with
``q`` in 0..15. That is what ``aten._weight_int4pack_mm_for_cpu`` computes, so a GGUF's 4-bit
blocks load as they are (:func:`local_engine.gguf_loader.q4_blocks`), with no second rounding;
an HF model is quantized to the same form at load. The four projections of every layer go to
int4; the embedding table stays int8 per row (as llama.cpp's Q4 files keep ``token_embd`` at 8 bits
or more: 4-bit logits cost far more quality than 4-bit projections), and so do the LM head's logits
that decoding looks at: without the compiled kernels, a decode step scans the vocabulary with a 4-bit
copy of the head and recomputes its top 64 logits from the int8 rows (:class:`Int4Head`; SmolLM2's
tied head is a fifth of its weights, and torch's int8 matmul of it was a fifth of an int4 decode step).

Decode-sized matmuls (on CPU, fewer than ``PACKED_MAX_ROWS`` rows, or ``KERNEL_MAX_ROWS`` on a CPU without
AMX; see :func:`_many_rows`) go through our kernels
(:mod:`local_engine.kernels`: C, AVX2, compiled at first use) where they build, reading the int8
weights or the int4 nibbles and dequantizing them in registers against float32 activations; torch's
packed kernels are the fallback.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from local_engine import kernels
from local_engine.models.llama import LlamaForCausalLM

QUANTIZATIONS = ("int8", "int4")
INT4_GROUP = 32  # inputs per scale/offset in int4 (the block size of GGUF's Q4_0 / Q4_1 / Q4_K sub-blocks)
# Rows from which a matmul dequantizes the layer instead of calling the row-bound packed kernel.
PACKED_MAX_ROWS = 24
# The same for our kernels on a CPU without AMX, where the layer is dequantized to float32 (below).
KERNEL_MAX_ROWS = 64
# Under int4, the highest logits of a decode step recomputed from the int8 head (Int4Head).
HEAD_REFINE = 64
_ACT = torch.bfloat16  # the activation dtype the packed kernel takes


def _many_rows(x: torch.Tensor, lib: object) -> tuple[bool, torch.dtype]:
    """``(few, dtype)`` for a matmul of ``x``'s rows: whether a packed kernel (ours when ``lib``, else
    torch's) takes it, and otherwise the dtype the layer is dequantized to for one GEMM shared by all the
    rows. Measured per CPU (SmolLM2's 576→1536 projection, 1 thread): with AMX (where these thresholds
    were first set) bf16's GEMM is fast from 24 rows; on an AVX2 machine torch's bf16 GEMM is 4-8x slower
    than float32's (64 rows: 13.5 ms against 2.2), and our kernels beat a float32 dequantize-and-GEMM up
    to ~64 rows (48 rows: int8 1.7 ms against 1.9, int4 2.6 against 3.9) but not past it (256 rows: int8
    9.4 against 7.9, int4 15.2 against 9.7)."""
    if x.device.type != "cpu":
        return False, _ACT
    if kernels.has_amx_bf16():
        return x.shape[0] < PACKED_MAX_ROWS, _ACT
    return x.shape[0] < (KERNEL_MAX_ROWS if lib is not None else PACKED_MAX_ROWS), torch.float32


def _as_input(y: torch.Tensor, x: torch.Tensor, out_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    """A 2-D matmul output ``y`` in the input ``x``'s dtype and leading shape, with the bias added."""
    y = y.to(x.dtype)
    if x.dim() != 2:
        y = y.reshape(*x.shape[:-1], out_features)
    return y if bias is None else y + bias


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
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        lib = kernels.library() if x2.device.type == "cpu" else None
        few, dtype = _many_rows(x2, lib)
        if few and lib is not None:  # a decode step's ~120 calls: kept short
            y = kernels.int8_mm(lib, x2, self.qweight, self.scale)
            if x.dtype is not torch.float32 or x.dim() != 2:
                y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        if few:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(_ACT), self.qweight, self.scale)
        else:  # many rows, or a device without the packed kernel: one dequantized matmul
            y = F.linear(x2.to(dtype), self.qweight.to(dtype) * self.scale.to(dtype)[:, None])
        return _as_input(y, x, self.out_features, self.bias)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The weights of rows ``ids`` in ``dtype`` (an embedding lookup in a tied table)."""
        return (self.qweight[ids].to(dtype) * self.scale[ids].to(dtype).unsqueeze(-1)).to(dtype)


Q8_GROUP = 32  # inputs per scale in GGUF's Q8_0 blocks


class Int8Blocks(NamedTuple):
    """int8 values with one float16 scale per 32 inputs of a row, ``w = q * d``: GGUF's Q8_0 blocks
    (:func:`local_engine.gguf_loader.q8_blocks`), kept as the file holds them."""

    q: torch.Tensor  # [out, in] int8
    d: torch.Tensor  # [out, in / 32] float16

    def dequantize(self) -> torch.Tensor:
        """float32 weights; exact (an int8 times a float16 fits float32's mantissa)."""
        rows, cols = self.q.shape
        return (self.q.float().reshape(rows, -1, Q8_GROUP) * self.d.float()[..., None]).reshape(rows, cols)

    @staticmethod
    def cat(parts: list[Int8Blocks]) -> Int8Blocks:
        return Int8Blocks(torch.cat([p.q for p in parts]), torch.cat([p.d for p in parts]))


class Int8BlockLinear(nn.Module):
    """``y = x @ W^T + bias`` from :class:`Int8Blocks` (a GGUF's Q8_0 weights served without a second
    rounding). Decode-sized steps on CPU go through our kernel (``kernels.int8b_mm``: the int8 values
    and float16 scales read as they are); other steps, other devices and a machine without the
    kernels dequantize the layer for one matmul (exact, but a fp32 matmul's speed or less)."""

    q: torch.Tensor
    d: torch.Tensor

    def __init__(self, blocks: Int8Blocks, bias: torch.Tensor | None) -> None:
        super().__init__()
        rows, cols = blocks.q.shape
        if cols % Q8_GROUP or blocks.d.shape != (rows, cols // Q8_GROUP):
            raise ValueError(f"int8 blocks need one scale per {Q8_GROUP} inputs: {tuple(blocks.d.shape)}")
        self.register_buffer("q", blocks.q.to(torch.int8).contiguous())
        self.register_buffer("d", blocks.d.to(torch.float16).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.in_features, self.out_features = cols, rows

    def dequantize(self) -> torch.Tensor:
        return Int8Blocks(self.q, self.d).dequantize()

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The weights of rows ``ids`` in ``dtype`` (an embedding lookup in a tied table)."""
        w = self.q[ids].float().unflatten(-1, (-1, Q8_GROUP)) * self.d[ids].float().unsqueeze(-1)
        return w.flatten(-2).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        lib = kernels.library() if x2.device.type == "cpu" else None
        few, dtype = _many_rows(x2, lib)
        if few and lib is not None:
            y = kernels.int8b_mm(lib, x2, self.q, self.d)
        else:
            y = F.linear(x2.to(dtype), self.dequantize().to(dtype))
        return _as_input(y, x, self.out_features, self.bias)


class Int8Embedding(nn.Module):
    """Embedding lookup from an int8 table (per-row scales, or a GGUF's Q8_0 blocks): with tied
    embeddings it is the LM head's."""

    def __init__(self, table: Int8Linear | Int8BlockLinear, dtype: torch.dtype) -> None:
        super().__init__()
        self.table = table
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.rows(ids, self.dtype)


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> Int4Blocks:
    """Round ``weight`` [out, in] to 4 bits per value, one scale and offset per ``group`` inputs of
    a row (min/max asymmetric: 0 maps to the group's minimum, 15 to its maximum)."""
    w = weight.detach().float()
    rows, cols = w.shape
    if cols % group:
        raise ValueError(f"int4 needs in_features ({cols}) divisible by the group size {group}")
    g = w.reshape(rows, cols // group, group)
    low, high = g.amin(-1), g.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-12)
    q = torch.round((g - low[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
    return Int4Blocks(q.reshape(rows, cols), scale, low + 8 * scale)


class Int4Blocks(NamedTuple):
    """4-bit weights as values and per-group parameters: ``w = (q - 8) * scale + zero`` over each
    group of ``in / scale.shape[1]`` inputs. ``q`` is [out, in] uint8 in 0..15; ``scale`` and
    ``zero`` [out, in / group] float32. Rows concatenate (a fused projection is its parts' rows)."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        rows, cols = self.q.shape
        groups = self.scale.shape[1]
        w = (self.q.float().reshape(rows, groups, -1) - 8) * self.scale[..., None] + self.zero[..., None]
        return w.reshape(rows, cols)

    @staticmethod
    def cat(parts: list[Int4Blocks]) -> Int4Blocks:
        return Int4Blocks(*(torch.cat(list(ts)) for ts in zip(*parts, strict=True)))


def _pack_tiles(q: torch.Tensor, tile: int) -> torch.Tensor:
    """``q`` [out, in] (0..15, ``out`` a multiple of ``tile``) in the CPU int4 kernel's layout: for
    each tile of ``tile`` output rows and each input ``k``, ``tile/2`` bytes whose low nibbles are
    the tile's first half of rows and high nibbles its second half."""
    rows, cols = q.shape
    halves = q.to(torch.uint8).reshape(rows // tile, 2, tile // 2, cols)
    t = halves.permute(0, 3, 1, 2)  # [tiles, in, 2, tile/2]
    return (t[:, :, 0] | (t[:, :, 1] << 4)).reshape(rows, cols // 2)


def _unpack_tiles(packed: torch.Tensor, tile: int) -> torch.Tensor:
    """The inverse of :func:`_pack_tiles`: [out, in] uint8 values 0..15."""
    rows, half = packed.shape
    t = packed.reshape(rows // tile, 2 * half, tile // 2)  # [tiles, in, tile/2]
    q = torch.stack((t & 15, t >> 4), dim=1)  # [tiles, 2, in, tile/2]
    return q.permute(0, 1, 3, 2).reshape(rows, 2 * half)


@functools.cache
def _cpu_tile() -> int:
    """Output rows per tile of ``_convert_weight_to_int4pack_for_cpu``'s layout: a build constant,
    found once by packing random values and comparing with each candidate layout, so the engine
    unpacks exactly what the kernel reads (and refuses a build that lays it out otherwise)."""
    q = torch.randint(0, 16, (256, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    for tile in (16, 32, 64, 128, 256):
        if packed.shape == (256, 32) and torch.equal(packed, _pack_tiles(q, tile)):
            return tile
    raise RuntimeError("this torch build packs int4 weights in a layout the engine does not know")


class Int4Linear(nn.Module):
    """``y = x @ W^T + bias`` from group-wise 4-bit weights (:class:`Int4Blocks`), in the input's dtype.

    On CPU with the compiled kernels (:mod:`local_engine.kernels`) the weights are kept as their
    nibbles, two inputs a byte in GGUF's order (``nib`` [out, in / 2]), with each row's scales and
    offsets as bf16 (``sz`` [out, 2, in / group]); few rows go through ``kernels.int4_mm``. Without
    them (no compiler, no AVX2) they are kept in torch's packed layout (``packed``, with
    ``scale_zero`` [in / group, out, 2]) for ``aten._weight_int4pack_mm_for_cpu``, output rows padded
    to its tile with zero rows that the output drops. Either way the scales and offsets are rounded
    to bf16 (what torch's kernel takes), so both compute the same weights; many rows go through
    one bf16 matmul on the layer unpacked for it (as :class:`Int8Linear`). Elsewhere the weights
    are kept as plain nibbles and every matmul unpacks them (no fused kernel is used off CPU)."""

    nib: torch.Tensor
    sz: torch.Tensor
    packed: torch.Tensor
    scale_zero: torch.Tensor

    def __init__(self, blocks: Int4Blocks, bias: torch.Tensor | None) -> None:
        super().__init__()
        rows, cols = blocks.q.shape
        self.in_features, self.out_features = cols, rows
        self.group = cols // blocks.scale.shape[1]
        device = blocks.q.device
        self.kernel = (
            device.type == "cpu" and self.group == kernels.INT4_GROUP and kernels.library() is not None
        )
        if self.kernel:
            self.tile = 1
            self.register_buffer("nib", kernels.pack_int4(blocks.q))
            self.register_buffer("sz", torch.stack((blocks.scale, blocks.zero), dim=1).to(_ACT).contiguous())
        else:
            self.tile = _cpu_tile() if device.type == "cpu" else 2
            pad = -rows % self.tile
            q, scale, zero = (F.pad(t, (0, 0, 0, pad)) for t in blocks)
            if device.type == "cpu":
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
            else:
                packed = _pack_tiles(q, self.tile)
            self.register_buffer("packed", packed)
            # [in / group, out, 2]: the kernel's scales-and-zeros operand.
            sz = torch.stack((scale.t(), zero.t()), dim=-1).to(_ACT).contiguous()
            self.register_buffer("scale_zero", sz)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = INT4_GROUP) -> Int4Linear:
        return cls(quantize_int4(linear.weight, group), linear.bias)

    def dequantize(self) -> torch.Tensor:
        """The weights the matmul uses ([out, in], bf16)."""
        if self.kernel:
            q = kernels.unpack_int4(self.nib)
            scale, zero = self.sz[:, 0], self.sz[:, 1]  # [out, groups]
        else:
            q = _unpack_tiles(self.packed, self.tile)[: self.out_features]
            sz = self.scale_zero[:, : self.out_features]  # [groups, out, 2]
            scale, zero = sz[..., 0].t(), sz[..., 1].t()
        g = q.reshape(self.out_features, -1, self.group).to(_ACT) - 8
        w = g * scale[..., None] + zero[..., None]
        return w.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        lib = kernels.library() if self.kernel and x2.device.type == "cpu" else None
        few, dtype = _many_rows(x2, lib)
        if few and lib is not None:  # as Int8Linear's
            y = kernels.int4_mm(lib, x2, self.nib, self.sz)
            if x.dtype is not torch.float32 or x.dim() != 2:
                y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        if few and not self.kernel:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(_ACT), self.packed, self.group, self.scale_zero
            )
            if y.shape[1] != self.out_features:  # the padding rows
                y = y[:, : self.out_features]
        else:
            y = F.linear(x2.to(dtype), self.dequantize().to(dtype))
        return _as_input(y, x, self.out_features, self.bias)


def _top_indices(x: torch.Tensor, k: int, chunk: int = 64) -> torch.Tensor:
    """``x.topk(k).indices`` ([rows, k], in no particular order) in two smaller passes: the top ``k``
    values lie in the ``k`` chunks of ``chunk`` columns with the highest maxima (each such value's
    chunk has a maximum at least as high, and distinct chunks' maxima are distinct top values), so
    ``topk`` runs on the chunks' maxima and then on those chunks' ``k * chunk`` values; ~2x faster
    than one ``topk`` over SmolLM2's 49152 logits on one core. Falls back to it for small or
    ragged rows."""
    rows, n = x.shape
    if n % chunk or n // chunk < k:
        return x.topk(k, dim=-1).indices
    chunks = x.view(rows, n // chunk, chunk)
    best = chunks.amax(-1).topk(k, dim=-1).indices  # [rows, k] chunk numbers
    values = chunks.gather(1, best[..., None].expand(-1, -1, chunk)).reshape(rows, k * chunk)
    cols = (best[..., None] * chunk + torch.arange(chunk, device=x.device)).reshape(rows, k * chunk)
    return cols.gather(1, values.topk(k, dim=-1).indices)


class Int4Head(nn.Module):
    """The LM head under int4: a step with few rows scans the vocabulary with a 4-bit copy of the
    head (group-wise, :class:`Int4Linear`: half the bytes of int8, the largest matmul of a decode
    step) and recomputes its ``refine`` highest logits from the int8 rows, which also serve the
    embedding lookup. The logits that sampling and greedy decoding look at are int8's (the
    4-bit scan alone costs SmolLM2 ~6% perplexity; refined, ~1.7%), the long tail 4-bit's. A step
    with many rows (a prefill that wants every position's logits) uses the int8 head alone."""

    def __init__(self, coarse: Int4Linear, exact: Int8Linear, refine: int = HEAD_REFINE) -> None:
        super().__init__()
        self.coarse = coarse
        self.exact = exact
        self.refine = min(refine, exact.out_features)
        self.in_features, self.out_features = exact.in_features, exact.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] >= PACKED_MAX_ROWS or x2.device.type != "cpu":
            return self.exact(x)
        logits = self.coarse(x2).float()
        top = _top_indices(logits, self.refine)  # [rows, refine]
        e = self.exact
        # index_select, not e.qweight[top]: advanced indexing of the table's rows costs ~6x more.
        flat = top.reshape(-1)
        w = e.qweight.index_select(0, flat).view(*top.shape, -1).float()
        rows = (
            torch.bmm(w, x2.float()[:, :, None]).squeeze(-1)
            * e.scale.index_select(0, flat).view(top.shape).float()
        )
        logits.scatter_(1, top, rows)
        return logits.to(x.dtype).reshape(*lead, self.out_features)


# The projections of a decoder layer: (submodule, attribute), the same four LoRA wraps.
PROJECTIONS = (
    ("self_attn", "qkv_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_up_proj"),
    ("mlp", "down_proj"),
)


def quantize_model(
    model: LlamaForCausalLM, method: str, blocks: dict[str, Int4Blocks | Int8Blocks] | None = None
) -> None:
    """Replace ``model``'s projections with ``method``'s (int8 or int4) and its LM head and
    embedding table with int8 ones (under int4 without the compiled kernels, the head also gets a
    4-bit copy: :class:`Int4Head`),
    in place. ``blocks`` holds weights a GGUF already quantized, by module name
    (``model.layers.0.self_attn.qkv_proj``, ``lm_head``, ``model.embed_tokens``), taken as they are
    instead of quantizing the module's weights again: 4-bit blocks (:class:`Int4Blocks`) for int4's
    projections, Q8_0 blocks (:class:`Int8Blocks`) for int8's projections and for the head and the
    embedding table under either method."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"unsupported quantization {method!r} ({', '.join(QUANTIZATIONS)})")
    blocks = blocks or {}
    for i, layer in enumerate(model.model.layers):
        for owner_name, name in PROJECTIONS:
            owner = getattr(layer, owner_name)
            linear = getattr(owner, name)
            given = blocks.get(f"model.layers.{i}.{owner_name}.{name}")
            quantized: nn.Module
            if method == "int8" and isinstance(given, Int8Blocks):
                quantized = Int8BlockLinear(given, linear.bias)
            elif method == "int8":
                quantized = Int8Linear.from_linear(linear)
            elif isinstance(given, Int4Blocks):
                quantized = Int4Linear(given, linear.bias)
            else:
                quantized = Int4Linear.from_linear(linear)
            setattr(owner, name, quantized)
    body = model.model
    embed = body.embed_tokens
    dtype = embed.weight.dtype
    tied = model.lm_head.weight is embed.weight
    # The head's 4-bit scan pays only against torch's packed int8 kernel: with ours (kernels.py) the
    # int8 head streams near the memory's rate, and the compute-bound 4-bit scan plus the refinement
    # was slower (SmolLM2, 1 thread: 3.1 ms against 2.6 ms) besides less exact, so it is kept only
    # where the compiled kernels are not.
    scan = method == "int4" and model.lm_head.in_features % INT4_GROUP == 0 and kernels.library() is None
    given_head = blocks.get("lm_head") or (blocks.get("model.embed_tokens") if tied else None)
    head: Int8Linear | Int8BlockLinear
    if isinstance(given_head, Int8Blocks) and not scan:  # Int4Head refines from per-row int8
        head = Int8BlockLinear(given_head, model.lm_head.bias)
    else:
        head = Int8Linear.from_linear(model.lm_head)
    given_table = blocks.get("model.embed_tokens")
    table: Int8Linear | Int8BlockLinear
    if tied:
        table = head
    elif isinstance(given_table, Int8Blocks):
        table = Int8BlockLinear(given_table, None)
    else:
        table = Int8Linear(*quantize_int8(embed.weight), None)
    body.embed_tokens = Int8Embedding(table, dtype)  # type: ignore[assignment]
    if scan and isinstance(head, Int8Linear):
        model.lm_head = Int4Head(Int4Linear.from_linear(model.lm_head), head)  # type: ignore[assignment]
    else:
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
    # The head in chunks of decode-sized steps, so the logits are those decoding computes (int4's head
    # differs with the number of rows: see Int4Head).
    return torch.cat([model.logits(h) for h in hidden.split(PACKED_MAX_ROWS - 1)])


def perplexity(model: LlamaForCausalLM, token_ids: list[int]) -> float:
    """``exp`` of the mean next-token negative log-likelihood of ``token_ids`` under ``model``: how
    quantization's quality is measured against full weights."""
    logprobs = prompt_logits(model, token_ids)[:-1].log_softmax(-1)
    nll = -logprobs.gather(1, torch.tensor(token_ids[1:])[:, None]).mean()
    return float(nll.exp())
