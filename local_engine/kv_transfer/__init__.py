"""Moving a finished prompt's KV blocks from a prefill worker to a decode worker.

The seam follows vLLM's KV-connector split: the prefill side *saves* a sequence's blocks when
its first token is sampled (vLLM: ``request_finished`` + ``save_kv_layer``), and hands back
``kv_transfer_params`` naming where they are; the decode side allocates fresh blocks for the
prompt (``update_state_after_alloc``), *loads* the KV into them (``start_load_kv`` /
``wait_for_layer_load``) and continues from the last prompt token. Two transports:
:mod:`.shm` (a memory-mapped file in /dev/shm, one host) and :mod:`.tcp` (asyncio streams).
"""

from local_engine.kv_transfer.connector import KVConnector, KVTransferError, LoadedKV, load_kv
from local_engine.kv_transfer.layout import KVLayout, gather_kv, scatter_kv
from local_engine.kv_transfer.shm import ShmConnector
from local_engine.kv_transfer.tcp import TcpConnector

__all__ = [
    "KVConnector",
    "KVLayout",
    "KVTransferError",
    "LoadedKV",
    "ShmConnector",
    "TcpConnector",
    "gather_kv",
    "load_kv",
    "scatter_kv",
]
