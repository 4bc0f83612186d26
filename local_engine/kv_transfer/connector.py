"""The prefill side's connector (save, hold until taken, expire) and the decode side's :func:`load_kv`."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from local_engine.kv_transfer.layout import KVCaches, KVLayout


class KVTransferError(RuntimeError):
    """A handoff could not be loaded: the prefill worker is gone, or the KV expired or does not fit."""


@dataclass(slots=True)
class LoadedKV:
    """A handoff on the decode side; ``release()`` once it is copied into the cache."""

    layout: KVLayout
    tensor: torch.Tensor
    _release: Callable[[], None] | None = None

    def release(self) -> None:
        self.tensor = torch.empty(0)
        if self._release is not None:
            try:
                self._release()
            except BufferError:  # a view is still alive somewhere: the mapping goes when it does
                pass
            self._release = None


@dataclass(slots=True)
class _Held:
    layout: KVLayout
    expires_at: float
    data: Any = None  # the transport's copy of the blocks
    extra: dict[str, Any] = field(default_factory=dict)


class KVConnector(ABC):
    """Prefill side: copies a finished prompt's blocks out of the cache (on the step thread, so the
    engine frees them at once) and holds the copy until a decode worker takes it or ``ttl_s`` passes,
    which is how a decode worker that died before taking its KV is cleaned up after."""

    transport: str

    def __init__(self, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self.saved_total = 0
        self.taken_total = 0
        self.expired_total = 0

    def save(
        self, handoff_id: str, token_ids: list[int], kv_caches: KVCaches, block_ids: list[int]
    ) -> dict[str, Any]:
        """Copy ``block_ids`` out of ``kv_caches``; return the ``kv_transfer_params`` a decode worker loads from."""
        layout = KVLayout.of(token_ids, kv_caches, len(block_ids))
        data, params = self._store(handoff_id, layout, kv_caches, block_ids)
        with self._lock:
            self._held[handoff_id] = _Held(layout, self.clock() + self.ttl_s, data)
            self.saved_total += 1
        return {"transport": self.transport, "handoff_id": handoff_id, "layout": layout.to_json(), **params}

    def sweep(self) -> int:
        """Drop handoffs past their TTL and those taken behind our back; returns how many are left."""
        now = self.clock()
        with self._lock:
            gone = [k for k, h in self._held.items() if h.expires_at <= now or self._was_taken(h)]
            for k in gone:
                h = self._held.pop(k)
                if h.expires_at <= now:
                    self.expired_total += 1
                else:
                    self.taken_total += 1
                self._drop(h.data)
            return len(self._held)

    def _take(self, handoff_id: str) -> _Held | None:
        with self._lock:
            return self._held.get(handoff_id)

    def _release(self, handoff_id: str, taken: bool) -> None:
        with self._lock:
            h = self._held.pop(handoff_id, None)
            if h is None:
                return
            self.taken_total += taken
        self._drop(h.data)

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            held = len(self._held)
            held_bytes = sum(h.layout.nbytes for h in self._held.values())
        return {
            "held": held,
            "held_bytes": held_bytes,
            "saved_total": self.saved_total,
            "taken_total": self.taken_total,
            "expired_total": self.expired_total,
        }

    async def start(self) -> None:
        """Start serving handoffs (the TCP listener); a no-op for shared memory."""
        return None

    async def close(self) -> None:
        """Stop serving and drop every handoff still held."""
        with self._lock:
            held, self._held = self._held, {}
        for h in held.values():
            self._drop(h.data)

    @abstractmethod
    def _store(
        self, handoff_id: str, layout: KVLayout, kv_caches: KVCaches, block_ids: list[int]
    ) -> tuple[Any, dict[str, Any]]:
        """Copy the blocks somewhere the decode side can reach; return (our handle, params for it)."""

    def _drop(self, data: Any) -> None:
        """Free the copy ``_store`` made (an in-memory copy just goes with its last reference)."""
        return None

    def _was_taken(self, held: _Held) -> bool:
        return False


async def load_kv(params: dict[str, Any], timeout_s: float = 30.0) -> LoadedKV:
    """Fetch the KV that ``params`` (a prefill worker's ``kv_transfer_params``) names. Raises
    :class:`KVTransferError` when it cannot (the prefill worker died, the KV expired)."""
    transport = params.get("transport")
    if transport == "shm":
        from local_engine.kv_transfer.shm import load_shm

        return load_shm(params)
    if transport == "tcp":
        from local_engine.kv_transfer.tcp import pull_tcp

        return await pull_tcp(params, timeout_s)
    raise KVTransferError(f"unknown KV transport {transport!r}")
