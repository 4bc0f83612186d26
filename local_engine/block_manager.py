"""Paged KV-cache bookkeeping: blocks, block tables, ref counts and the prefix cache.

A full block is keyed by ``hash((hash of the block before it, its tokens))`` so a key
names the whole prefix up to that block; the chain starts at the sequence's ``cache_seed``
(0, or its LoRA adapter's), so blocks computed with different adapters are never shared. Blocks whose ref count drops to 0 keep their
key and sit in an LRU free list: a later request with the same prefix takes them back,
a request that needs fresh space evicts the least recently freed one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from local_engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0  # of which served from cache

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            if self._cached.get(block.hash) == block_id:
                del self._cached[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id

    def _match_prefix(self, seq: Sequence) -> tuple[list[int], list[int]]:
        if not self.enable_prefix_caching:
            return [], []
        bs = self.block_size
        ids: list[int] = []
        hashes: list[int] = []
        prev = seq.cache_seed
        # The last token is always computed, so the step produces its logits.
        for i in range((seq.num_tokens - 1) // bs):
            chunk = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = hash((prev, chunk))
            block_id = self._cached.get(h)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            ids.append(block_id)
            hashes.append(h)
            prev = h
        return ids, hashes

    def allocate(self, seq: Sequence, token_budget: int) -> int:
        """Admit a sequence without blocks: reuse cached prefix blocks, allocate the rest of
        the first chunk. Returns the number of tokens to compute now, 0 if it does not fit."""
        assert not seq.block_table
        hit_ids, hit_hashes = self._match_prefix(seq)
        computed = len(hit_ids) * self.block_size
        n = min(seq.num_tokens - computed, token_budget)
        need = self._blocks_for(computed + n) - len(hit_ids)
        revived = sum(1 for b in hit_ids if self.blocks[b].ref_count == 0)
        if need > len(self._free) - revived:
            return 0
        for b in hit_ids:
            block = self.blocks[b]
            if block.ref_count == 0:
                del self._free[b]
            block.ref_count += 1
        seq.block_table = hit_ids + [self._take_free() for _ in range(need)]
        seq.block_hashes = hit_hashes
        seq.num_computed_tokens = computed
        if seq.num_preemptions == 0:
            self.prefix_queries += seq.num_prompt_tokens
            self.prefix_hits += computed
            seq.num_cached_tokens = computed
        return n

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow ``seq``'s block table to hold ``num_new_tokens`` more; False (and no change) if full."""
        need = self._blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if need > len(self._free):
            return False
        seq.block_table.extend(self._take_free() for _ in range(need))
        return True

    def commit(self, seq: Sequence) -> None:
        """Key the blocks that the last step filled, so later requests can share them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = seq.num_computed_tokens // bs
        prev = seq.block_hashes[-1] if seq.block_hashes else seq.cache_seed
        for i in range(len(seq.block_hashes), full):
            chunk = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = hash((prev, chunk))
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and h not in self._cached:
                block.hash, block.token_ids = h, chunk
                self._cached[h] = block.block_id
            seq.block_hashes.append(h)
            prev = h

    def free(self, seq: Sequence) -> None:
        # Tail first: the prompt's head is the most shareable, so it is evicted last.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0
