"""TCP transport between hosts: the prefill worker listens; a decode worker connects and pulls.

Frames are ``!2sBQ`` (magic ``KV``, kind, length) then the payload: kind 1 is JSON, kind 2 raw
tensor bytes. A pull is ``{"pull": id}`` → the layout as JSON → one raw frame per layer →
``{"ack": id}``. The prefill side drops its copy when the connection ends, acknowledged or not:
a decode worker that dies mid-transfer leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import warnings
from typing import Any

import torch

from local_engine.kv_transfer.connector import KVConnector, KVTransferError, LoadedKV
from local_engine.kv_transfer.layout import KVCaches, KVLayout, gather_kv

_HEADER = struct.Struct("!2sBQ")
_MAGIC = b"KV"
JSON, RAW = 1, 2
_MAX_JSON = 1 << 24


async def write_frame(writer: asyncio.StreamWriter, kind: int, payload: bytes | memoryview) -> None:
    writer.write(_HEADER.pack(_MAGIC, kind, len(payload)))
    writer.write(payload)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader, kind: int, max_len: int) -> bytes:
    magic, got, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if magic != _MAGIC or got != kind or length > max_len:
        raise KVTransferError("malformed KV transfer frame")
    return await reader.readexactly(length)


async def _write_json(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    await write_frame(writer, JSON, json.dumps(obj).encode())


async def _read_json(reader: asyncio.StreamReader) -> dict[str, Any]:
    obj = json.loads(await read_frame(reader, JSON, _MAX_JSON))
    if not isinstance(obj, dict):
        raise KVTransferError("malformed KV transfer message")
    return obj


class TcpConnector(KVConnector):
    """Holds handoffs in memory and serves them on ``host:port`` (``port=0``: any free port)."""

    transport = "tcp"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, advertise_host: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.port = port
        self.advertise_host = advertise_host or host
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await super().close()

    def _store(
        self, handoff_id: str, layout: KVLayout, kv_caches: KVCaches, block_ids: list[int]
    ) -> tuple[Any, dict[str, Any]]:
        out = torch.empty(layout.shape, dtype=layout.torch_dtype)
        gather_kv(kv_caches, block_ids, out)
        return out, {"host": self.advertise_host, "port": self.port}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handoff_id = None
        taken = False
        try:
            handoff_id = str((await _read_json(reader)).get("pull"))
            held = self._take(handoff_id)
            if held is None:
                await _write_json(writer, {"error": "no such KV handoff (expired or already taken)"})
                return
            await _write_json(writer, held.layout.to_json())
            flat = held.data.view(held.layout.shape[0], -1).view(torch.uint8)  # bfloat16 has no numpy type
            for layer in range(flat.shape[0]):
                await write_frame(writer, RAW, memoryview(flat[layer].numpy()))
            taken = (await _read_json(reader)).get("ack") == handoff_id
        except (ConnectionError, asyncio.IncompleteReadError, KVTransferError, ValueError):
            pass  # the decode side went away or spoke nonsense; either way this copy is done with
        finally:
            if handoff_id is not None:
                self._release(handoff_id, taken)
            writer.close()


async def pull_tcp(params: dict[str, Any], timeout_s: float) -> LoadedKV:
    handoff_id = str(params["handoff_id"])
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(params["host"], int(params["port"]))
            try:
                await _write_json(writer, {"pull": handoff_id})
                head = await _read_json(reader)
                if "error" in head:
                    raise KVTransferError(f"prefill worker: {head['error']}")
                layout = KVLayout.from_json(head)
                out = torch.empty(layout.shape, dtype=layout.torch_dtype)
                flat = out.view(layout.shape[0], -1).view(torch.uint8)
                per_layer = flat.shape[1]
                for layer in range(layout.shape[0]):
                    data = await read_frame(reader, RAW, per_layer)
                    if len(data) != per_layer:
                        raise KVTransferError("short KV layer frame")
                    with warnings.catch_warnings():  # read-only bytes: we only read them
                        warnings.simplefilter("ignore", UserWarning)
                        flat[layer].copy_(torch.frombuffer(data, dtype=torch.uint8))
                await _write_json(writer, {"ack": handoff_id})
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except TimeoutError:
        raise KVTransferError("timed out pulling KV from the prefill worker") from None
    except (OSError, asyncio.IncompleteReadError) as e:
        raise KVTransferError(f"prefill worker unreachable or gone mid-transfer: {e!r}") from None
    return LoadedKV(layout, out)
