"""Paged attention's decode paths against plain attention over each sequence's keys: a lone decode
(its blocks consecutive, read in place, or scattered, gathered), several decodes (padded, masked),
and decodes beside a prefill chunk."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from local_engine.attention import build_metadata, paged_attention

H, HKV, D, BS, BLOCKS = 4, 2, 8, 4, 16


def _reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One query token [H, D] over a sequence's keys and values [L, Hkv, D]."""
    k = keys.repeat_interleave(H // HKV, dim=1).transpose(0, 1)  # [H, L, D]
    v = values.repeat_interleave(H // HKV, dim=1).transpose(0, 1)
    weights = (q[:, None] @ k.transpose(1, 2) * D**-0.5).softmax(-1)  # [H, 1, L]
    return (weights @ v).squeeze(1)


@pytest.mark.parametrize(
    "tables",
    [
        [[3, 4, 5]],  # consecutive: read in place
        [[5, 2, 9]],  # scattered: gathered
        [[3, 4, 5], [7, 1]],  # two decodes: padded and masked
    ],
)
@pytest.mark.parametrize("with_prefill", [False, True])
def test_decode_attention_matches_plain_attention(tables: list[list[int]], with_prefill: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    k_cache = torch.randn(BLOCKS, BS, HKV, D, generator=gen)
    v_cache = torch.randn(BLOCKS, BS, HKV, D, generator=gen)
    lens = [len(t) * BS - 1 for t in tables]  # each decode's context, its new token included
    query_lens, context_lens, block_tables = [1] * len(tables), list(lens), [list(t) for t in tables]
    if with_prefill:  # a 3-token prompt in block 12
        query_lens.append(3)
        context_lens.append(3)
        block_tables.append([12])
    t = sum(query_lens)
    q = torch.randn(t, H, D, generator=gen)
    k = torch.randn(t, HKV, D, generator=gen)
    v = torch.randn(t, HKV, D, generator=gen)
    meta = build_metadata(query_lens, context_lens, block_tables, BS, torch.device("cpu"))
    assert meta.decode_first_block == (3 if tables == [[3, 4, 5]] else -1)
    out = paged_attention(q, k, v, k_cache, v_cache, meta, D**-0.5)
    for i, (table, n) in enumerate(zip(tables, lens, strict=True)):
        keys = k_cache[table].reshape(-1, HKV, D)[:n]  # the cache after the step's writes
        values = v_cache[table].reshape(-1, HKV, D)[:n]
        assert torch.equal(keys[-1], k[i]) and torch.equal(values[-1], v[i])
        torch.testing.assert_close(out[i], _reference(q[i], keys, values))
    if with_prefill:
        qp = q[len(tables) :].transpose(0, 1)[None]
        kp = k[len(tables) :].transpose(0, 1)[None]
        vp = v[len(tables) :].transpose(0, 1)[None]
        want = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=D**-0.5, enable_gqa=True)
        torch.testing.assert_close(out[len(tables) :], want[0].transpose(0, 1))
