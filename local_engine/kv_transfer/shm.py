"""Shared-memory transport: the prefill side writes the blocks straight into a memory-mapped file
in /dev/shm; the decode side maps it (no copy: ``torch.frombuffer`` over the mapping), unlinks
the name at once (so it is taken, and freed when the mapping goes) and copies into its cache.

A plain file in /dev/shm rather than :mod:`multiprocessing.shared_memory`: on Python 3.11 every
process that opens a segment registers it with its resource tracker, which unlinks or warns at
exit; here ownership is explicit (the taker unlinks, the maker unlinks on expiry).
"""

from __future__ import annotations

import mmap
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from local_engine.kv_transfer.connector import KVConnector, KVTransferError, LoadedKV, _Held
from local_engine.kv_transfer.layout import KVCaches, KVLayout, gather_kv

SHM_DIR = Path("/dev/shm")


def _map(path: Path, size: int, create: bool) -> mmap.mmap:
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, size)
        # Private and writable: torch wants a writable buffer; nothing is written, so nothing is copied.
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED if create else mmap.MAP_PRIVATE)
    finally:
        os.close(fd)


def _tensor(mm: mmap.mmap, layout: KVLayout) -> torch.Tensor:
    return torch.frombuffer(mm, dtype=layout.torch_dtype).view(layout.shape)


class ShmConnector(KVConnector):
    transport = "shm"

    def __init__(self, directory: Path = SHM_DIR, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.directory = directory

    def _store(
        self, handoff_id: str, layout: KVLayout, kv_caches: KVCaches, block_ids: list[int]
    ) -> tuple[Any, dict[str, Any]]:
        path = self.directory / f"local-engine-kv-{uuid.uuid4().hex}"
        mm = _map(path, layout.nbytes, create=True)
        try:
            out = _tensor(mm, layout)
            gather_kv(kv_caches, block_ids, out)
            del out
        finally:
            mm.close()
        return path, {"path": str(path)}

    def _drop(self, data: Any) -> None:
        Path(data).unlink(missing_ok=True)

    def _was_taken(self, held: _Held) -> bool:
        return not Path(held.data).exists()


def load_shm(params: dict[str, Any]) -> LoadedKV:
    layout = KVLayout.from_json(params["layout"])
    path = Path(params["path"])
    if not path.name.startswith("local-engine-kv-"):
        raise KVTransferError("KV path is not a local-engine handoff")
    try:
        mm = _map(path, layout.nbytes, create=False)
    except FileNotFoundError:
        raise KVTransferError("the KV handoff is gone (expired, or its prefill worker cleaned up)") from None
    path.unlink(missing_ok=True)  # taken: the memory lives on in our mapping until it is released
    return LoadedKV(layout, _tensor(mm, layout), mm.close)
