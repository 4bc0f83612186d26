"""Where uploaded files and batch results are kept: a small interface (``Blobs``) and a local directory.

Writes and reads go chunk by chunk (a 200 MB upload is never whole in memory); the file work runs in a thread
so the event loop never waits on the disk. An object store (S3, GCS) is another class with these four methods.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Protocol

from errors import PayloadTooLarge

CHUNK = 1 << 20


class Blobs(Protocol):
    async def write(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> int:
        """Stores ``chunks`` under ``key``; returns the size. Over ``max_bytes``: nothing kept, PayloadTooLarge."""
        ...

    def read(self, key: str) -> AsyncIterator[bytes]:
        """The blob's bytes, chunk by chunk (FileNotFoundError when there is none)."""
        ...

    async def delete(self, key: str) -> None: ...


class LocalBlobs:
    """One file per key under ``root`` (a compose volume); written to a temporary name, then renamed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad blob key {key!r}")
        return self.root / key

    async def write(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> int:
        path = self._path(key)
        partial = path.with_name(f".{key}.part")
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        handle = await asyncio.to_thread(open, partial, "wb")
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise PayloadTooLarge(f"File exceeds the maximum size of {max_bytes} bytes.")
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise
        return size

    async def read(self, key: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self._path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)


async def lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The non-empty lines of a JSONL blob, one at a time (a line may span chunks)."""
    rest = b""
    async for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for line in parts:
            if line.strip():
                yield line
    if rest.strip():
        yield rest
