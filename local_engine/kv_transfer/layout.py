"""The shape of a handoff: one contiguous ``[layers, 2 (k, v), blocks, block_size, kv_heads, head_dim]``
tensor holding a sequence's prompt blocks, and the metadata the receiver checks it against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class KVLayout:
    """What a handoff holds: the prompt it was computed for and the tensor's shape and dtype."""

    token_ids: tuple[int, ...]
    block_size: int
    dtype: str
    shape: tuple[int, ...]  # (layers, 2, blocks, block_size, kv_heads, head_dim)

    @classmethod
    def of(cls, token_ids: list[int], kv_caches: KVCaches, num_blocks: int) -> KVLayout:
        k = kv_caches[0][0]
        dtype = next(name for name, t in _DTYPES.items() if t == k.dtype)
        return cls(tuple(token_ids), k.shape[1], dtype, (len(kv_caches), 2, num_blocks, *k.shape[1:]))

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        n = torch.empty((), dtype=self.torch_dtype).element_size()
        for d in self.shape:
            n *= d
        return n

    def to_json(self) -> dict[str, Any]:
        return {
            "token_ids": list(self.token_ids),
            "block_size": self.block_size,
            "dtype": self.dtype,
            "shape": list(self.shape),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KVLayout:
        if d.get("dtype") not in _DTYPES:
            raise ValueError(f"unsupported KV dtype {d.get('dtype')!r}")
        return cls(
            tuple(int(t) for t in d["token_ids"]),
            int(d["block_size"]),
            d["dtype"],
            tuple(int(s) for s in d["shape"]),
        )

    def check_fits(self, kv_caches: KVCaches) -> None:
        """Raise ValueError when this handoff cannot go into ``kv_caches`` (another model or dtype)."""
        k = kv_caches[0][0]
        mine = (self.shape[0], self.shape[3], self.shape[4], self.shape[5], self.torch_dtype)
        theirs = (len(kv_caches), k.shape[1], k.shape[2], k.shape[3], k.dtype)
        if mine != theirs:
            raise ValueError(f"KV handoff shaped {mine} does not fit this engine's cache {theirs}")


def gather_kv(kv_caches: KVCaches, block_ids: list[int], out: torch.Tensor) -> None:
    """Copy ``block_ids`` of every layer into ``out`` (shaped as a :class:`KVLayout` says)."""
    idx = torch.tensor(block_ids, dtype=torch.long, device=kv_caches[0][0].device)
    for layer, (k, v) in enumerate(kv_caches):
        # Straight into the destination (a mapping of /dev/shm, say): no temporary copy.
        torch.index_select(k, 0, idx, out=out[layer, 0])
        torch.index_select(v, 0, idx, out=out[layer, 1])


def scatter_kv(kv_caches: KVCaches, block_ids: list[int], kv: torch.Tensor) -> None:
    """Write ``kv`` (``[layers, 2, len(block_ids), ...]``) into ``block_ids`` of every layer."""
    if not block_ids:
        return
    device = kv_caches[0][0].device
    idx = torch.tensor(block_ids, dtype=torch.long, device=device)
    for layer, (k, v) in enumerate(kv_caches):
        k.index_copy_(0, idx, kv[layer, 0].to(device))
        v.index_copy_(0, idx, kv[layer, 1].to(device))
