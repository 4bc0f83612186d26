"""Paged attention on a block-shaped KV cache, in plain torch.

The cache of one layer is ``[num_blocks, block_size, num_kv_heads, head_dim]``. Each
step writes the new keys/values at their slots (``block_id * block_size + offset``),
then gathers every sequence's context whole blocks at a time through its block table
(copying 16-token blocks is far cheaper than indexing token by token). Decodes (one
query token each) share one padded SDPA call; each prefill chunk gets its own call
because its causal mask depends on how much context precedes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from local_engine import kernels


@dataclass(slots=True)
class PrefillChunk:
    start: int  # index of the chunk's first token in the flat batch
    length: int
    context_len: int
    blocks: torch.Tensor  # [ceil(context_len / block_size)] block ids
    mask: torch.Tensor | None  # None: plain causal (no cached context)


@dataclass(slots=True)
class AttentionMetadata:
    """Per-step index tensors shared by every layer."""

    slot_mapping: torch.Tensor  # [num_tokens] where each new token's K/V goes
    decode_token_idx: torch.Tensor | None  # [B] flat indices of decode tokens
    decode_blocks: torch.Tensor | None  # [B * max_blocks] padded block tables, flattened
    decode_mask: torch.Tensor | None  # [B, 1, 1, max_blocks * block_size] True where a key is visible
    prefills: list[PrefillChunk]
    # The context length of a lone decode (B == 1), whose keys are cut to it instead of masked; else 0.
    decode_len: int = 0
    # A lone decode whose blocks are consecutive in the cache: the first one (its K/V are then a view
    # of the cache, not a copy); else -1.
    decode_first_block: int = -1


def build_metadata(
    query_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device,
) -> AttentionMetadata:
    slot_mapping: list[int] = []
    decode_idx: list[int] = []
    decode_tables: list[list[int]] = []
    decode_lens: list[int] = []
    prefills: list[PrefillChunk] = []
    start = 0
    for q, ctx, table in zip(query_lens, context_lens, block_tables, strict=True):
        slot_mapping.extend(table[p // block_size] * block_size + p % block_size for p in range(ctx - q, ctx))
        num_blocks = -(-ctx // block_size)
        if q == 1:
            decode_idx.append(start)
            decode_tables.append(table[:num_blocks])
            decode_lens.append(ctx)
        else:
            mask = None
            if ctx != q:
                # query i sits at position ctx - q + i and sees keys 0..that position
                qpos = torch.arange(ctx - q, ctx, device=device).unsqueeze(1)
                mask = torch.arange(ctx, device=device).unsqueeze(0) <= qpos
            blocks = torch.tensor(table[:num_blocks], device=device)
            prefills.append(PrefillChunk(start, q, ctx, blocks, mask))
        start += q
    dec_idx = dec_blocks = dec_mask = None
    if decode_tables:
        width = max(len(t) for t in decode_tables)
        dec_blocks = torch.tensor(
            [t + [0] * (width - len(t)) for t in decode_tables], device=device
        ).flatten()
        lens = torch.tensor(decode_lens, device=device)
        visible = torch.arange(width * block_size, device=device).unsqueeze(0) < lens.unsqueeze(1)
        dec_mask = visible[:, None, None, :]
        dec_idx = torch.tensor(decode_idx, device=device)
    lone_len = decode_lens[0] if len(decode_lens) == 1 else 0
    first = -1
    if lone_len:
        table = decode_tables[0]
        if table == list(range(table[0], table[0] + len(table))):
            first = table[0]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slot_mapping, device=device, dtype=torch.long),
        decode_token_idx=dec_idx,
        decode_blocks=dec_blocks,
        decode_mask=None if lone_len else dec_mask,
        prefills=prefills,
        decode_len=lone_len,
        decode_first_block=first,
    )


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor | None,  # [T, Hkv, D]; None: the step's keys and values are already in the cache
    v: torch.Tensor | None,
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    hkv, d = k_cache.shape[2], k_cache.shape[3]
    if k is not None and v is not None:
        k_cache.view(-1, hkv, d).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, hkv, d).index_copy_(0, meta.slot_mapping, v)
    if not meta.prefills and meta.decode_token_idx is not None:
        # Decodes only (every step of plain generation): token i is decode i, so neither a gather of
        # the queries nor a scatter of the outputs.
        return _decode_attention(q, k_cache, v_cache, meta, scale)
    out = torch.empty_like(q)
    gqa = q.shape[1] != hkv
    if meta.decode_token_idx is not None:
        qd = q.index_select(0, meta.decode_token_idx)
        out.index_copy_(0, meta.decode_token_idx, _decode_attention(qd, k_cache, v_cache, meta, scale))
    for p in meta.prefills:
        qp = q[p.start : p.start + p.length].transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
        kp = k_cache.index_select(0, p.blocks).view(-1, hkv, d)[: p.context_len].transpose(0, 1).unsqueeze(0)
        vp = v_cache.index_select(0, p.blocks).view(-1, hkv, d)[: p.context_len].transpose(0, 1).unsqueeze(0)
        op = F.scaled_dot_product_attention(
            qp, kp, vp, attn_mask=p.mask, is_causal=p.mask is None, scale=scale, enable_gqa=gqa
        )
        out[p.start : p.start + p.length] = op.squeeze(0).transpose(0, 1)
    return out


def _decode_attention(
    qd: torch.Tensor,  # [B, H, D], the decode tokens' queries
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """The decodes' outputs ``[B, H, D]``: one padded SDPA call over their gathered blocks (a lone
    decode's keys cut to its length instead of masked, and read in place when its blocks are
    consecutive)."""
    assert meta.decode_blocks is not None
    b, hkv, d = qd.shape[0], k_cache.shape[2], k_cache.shape[3]
    lib = kernels.library() if 0 < meta.decode_len <= kernels.DECODE_ATTENTION_MAX_LEN else None
    if (
        lib is not None
        and qd.dtype is torch.float32
        and k_cache.dtype is torch.float32
        and qd.device.type == "cpu"
        and qd.is_contiguous()
        and k_cache.is_contiguous()
        and v_cache.is_contiguous()
        and not torch.is_grad_enabled()
    ):
        # A lone decode on the CPU: one compiled call over its blocks in place (SDPA and the gather or
        # the views around it cost ~70-90 µs a layer on SmolLM2's short contexts).
        return kernels.decode_attention(
            lib, qd[0], k_cache, v_cache, meta.decode_blocks, meta.decode_len, scale
        ).unsqueeze(0)
    if meta.decode_first_block >= 0:  # consecutive blocks: read in place (a copy grows with the context)
        first, n = meta.decode_first_block, meta.decode_blocks.shape[0]
        keys, values = k_cache[first : first + n], v_cache[first : first + n]
    else:
        keys, values = (
            k_cache.index_select(0, meta.decode_blocks),
            v_cache.index_select(0, meta.decode_blocks),
        )
    kd = keys.view(b, -1, hkv, d).transpose(1, 2)  # [B, Hkv, L, D]
    vd = values.view(b, -1, hkv, d).transpose(1, 2)
    if meta.decode_len:  # unmasked: SDPA's cheaper path
        kd, vd = kd[:, :, : meta.decode_len], vd[:, :, : meta.decode_len]
    od = F.scaled_dot_product_attention(
        qd.unsqueeze(2), kd, vd, attn_mask=meta.decode_mask, scale=scale, enable_gqa=qd.shape[1] != hkv
    )
    return od.squeeze(2)
