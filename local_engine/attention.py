"""Paged attention on a flat KV cache, in plain torch.

The cache of one layer is ``[num_slots, num_kv_heads, head_dim]`` where a slot is
``block_id * block_size + offset``. Each step writes the new keys/values at their
slots, then gathers every sequence's context through its block table.
Decodes (one query token each) are batched into one padded SDPA call; each prefill
chunk gets its own call because its causal mask depends on its offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillChunk:
    start: int  # index of the chunk's first token in the flat batch
    length: int
    context_slots: torch.Tensor  # [context_len] slots of all keys the chunk attends to
    mask: torch.Tensor | None  # None: plain causal (no cached context)


@dataclass(slots=True)
class AttentionMetadata:
    """Per-step index tensors shared by every layer."""

    slot_mapping: torch.Tensor  # [num_tokens] where each new token's K/V goes
    decode_token_idx: torch.Tensor | None  # [B] flat indices of decode tokens
    decode_slots: torch.Tensor | None  # [B, max_ctx] padded context slots
    decode_mask: torch.Tensor | None  # [B, 1, 1, max_ctx] True where a key is visible
    prefills: list[PrefillChunk]


def build_metadata(
    query_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device,
) -> AttentionMetadata:
    slot_mapping: list[int] = []
    decode_idx: list[int] = []
    decode_rows: list[list[int]] = []
    prefills: list[PrefillChunk] = []
    start = 0
    for q, ctx, table in zip(query_lens, context_lens, block_tables, strict=True):
        slots = [table[p // block_size] * block_size + p % block_size for p in range(ctx)]
        slot_mapping.extend(slots[ctx - q :])
        if q == 1:
            decode_idx.append(start)
            decode_rows.append(slots)
        else:
            mask = None
            if ctx != q:
                # query i sits at position ctx - q + i and sees keys 0..that position
                qpos = torch.arange(ctx - q, ctx, device=device).unsqueeze(1)
                mask = torch.arange(ctx, device=device).unsqueeze(0) <= qpos
            prefills.append(PrefillChunk(start, q, torch.tensor(slots, device=device), mask))
        start += q
    dec_idx = dec_slots = dec_mask = None
    if decode_rows:
        width = max(len(r) for r in decode_rows)
        dec_slots = torch.tensor([r + [0] * (width - len(r)) for r in decode_rows], device=device)
        lens = torch.tensor([len(r) for r in decode_rows], device=device)
        dec_mask = (torch.arange(width, device=device).unsqueeze(0) < lens.unsqueeze(1))[:, None, None, :]
        dec_idx = torch.tensor(decode_idx, device=device)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slot_mapping, device=device, dtype=torch.long),
        decode_token_idx=dec_idx,
        decode_slots=dec_slots,
        decode_mask=dec_mask,
        prefills=prefills,
    )


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,
    k_cache: torch.Tensor,  # [num_slots, Hkv, D]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    k_cache[meta.slot_mapping] = k
    v_cache[meta.slot_mapping] = v
    out = torch.empty_like(q)
    gqa = q.shape[1] != k.shape[1]
    if meta.decode_token_idx is not None:
        assert meta.decode_slots is not None
        qd = q[meta.decode_token_idx].unsqueeze(2)  # [B, H, 1, D]
        kd = k_cache[meta.decode_slots].transpose(1, 2)  # [B, Hkv, L, D]
        vd = v_cache[meta.decode_slots].transpose(1, 2)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=scale, enable_gqa=gqa)
        out[meta.decode_token_idx] = od.squeeze(2)
    for p in meta.prefills:
        qp = q[p.start : p.start + p.length].transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
        kp = k_cache[p.context_slots].transpose(0, 1).unsqueeze(0)
        vp = v_cache[p.context_slots].transpose(0, 1).unsqueeze(0)
        op = F.scaled_dot_product_attention(
            qp, kp, vp, attn_mask=p.mask, is_causal=p.mask is None, scale=scale, enable_gqa=gqa
        )
        out[p.start : p.start + p.length] = op.squeeze(0).transpose(0, 1)
    return out
