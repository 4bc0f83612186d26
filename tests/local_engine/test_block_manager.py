"""Block tables, ref counts, prefix-cache hits and LRU reuse of freed cached blocks."""

from __future__ import annotations

from local_engine.block_manager import BlockManager
from local_engine.sampling_params import SamplingParams
from local_engine.sequence import Sequence


def _seq(tokens: list[int]) -> Sequence:
    return Sequence("r", tokens, SamplingParams())


def _compute_all(bm: BlockManager, seq: Sequence) -> None:
    n = bm.allocate(seq, 10_000)
    assert n > 0
    seq.num_computed_tokens += n
    bm.commit(seq)


def test_prefix_blocks_are_shared_with_ref_counts() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    a = _seq(list(range(10)))
    _compute_all(bm, a)
    assert len(a.block_table) == 3 and bm.num_used_blocks == 3
    b = _seq([*range(8), 99, 98, 97])
    n = bm.allocate(b, 10_000)
    assert b.num_computed_tokens == 8 and n == 3  # two full blocks hit, three tokens to compute
    assert b.block_table[:2] == a.block_table[:2]
    assert [bm.blocks[i].ref_count for i in a.block_table[:2]] == [2, 2]
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:2]] == [1, 1]
    bm.free(b)
    assert bm.num_used_blocks == 0
    assert bm.prefix_hits == 8 and bm.prefix_queries == 21


def test_the_last_token_is_always_computed() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    _compute_all(bm, _seq(list(range(8))))
    again = _seq(list(range(8)))
    assert bm.allocate(again, 100) == 4  # the second block is recomputed to produce logits
    assert again.num_computed_tokens == 4


def test_freed_cached_blocks_are_reused_lru_and_evicted_oldest_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    old, new = _seq([1, 2, 3]), _seq([5, 6, 7])
    _compute_all(bm, old)
    bm.free(old)
    _compute_all(bm, new)
    bm.free(new)
    # Needing 3 fresh blocks evicts [1, 2]'s block (freed first) but keeps [5, 6]'s.
    filler = _seq([9, 9, 8, 8, 7])
    assert bm.allocate(filler, 100) == 5
    bm.free(filler)
    hits = bm.prefix_hits
    hit = _seq([5, 6, 0])
    assert bm.allocate(hit, 100) == 1 and bm.prefix_hits == hits + 2
    bm.free(hit)
    assert bm.allocate(_seq([1, 2, 0]), 100) == 3  # evicted: computed from scratch


def test_allocation_fails_cleanly_when_full() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    big = _seq(list(range(12)))
    assert bm.allocate(big, 100) == 0 and big.block_table == [] and bm.num_free_blocks == 2
    small = _seq(list(range(5)))
    assert bm.allocate(small, 100) == 5
    small.num_computed_tokens = 5
    assert bm.append_slots(small, 3)
    assert not bm.append_slots(small, 4)
