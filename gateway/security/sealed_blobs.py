"""Uploaded files and batch outputs sealed at rest, frame by frame, so a 200 MB file is never whole in memory.

On disk a blob is a run of frames: a 4-byte big-endian length, a flag byte (1 on the last frame), then the
frame sealed with AES-256-GCM (``Keyring.seal_binary``) over at most ``FRAME`` bytes of the file. Each frame's
associated data is the blob's key, its index and the flag: frames moved between files, reordered, dropped from
the end or replayed do not open. A blob that does not open whole (a key rotated out, altered bytes, a file
written before encryption was on) reads as absent: ``FileNotFoundError``, as a blob that is not there.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from errors import PayloadTooLarge

from ..blobs import Blobs
from .crypto import Keyring

FRAME = 64 * 1024


class SealedBlobs:
    def __init__(self, inner: Blobs, keyring: Keyring) -> None:
        self.inner = inner
        self._keyring = keyring

    def _frame(self, key: str, index: int, plaintext: bytes, last: bool) -> bytes:
        flag = b"\x01" if last else b"\x00"
        sealed = self._keyring.seal_binary(plaintext, f"{key}:{index}:".encode() + flag)
        return (len(sealed) + 1).to_bytes(4, "big") + flag + sealed

    async def write(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> int:
        size = 0

        async def frames() -> AsyncIterator[bytes]:
            nonlocal size
            pending, index = bytearray(), 0
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise PayloadTooLarge(f"File exceeds the maximum size of {max_bytes} bytes.")
                pending += chunk
                if len(pending) > FRAME:
                    whole = len(pending) - len(pending) % FRAME
                    out = [
                        self._frame(key, index + i, bytes(pending[at : at + FRAME]), False)
                        for i, at in enumerate(range(0, whole, FRAME))
                    ]
                    index += len(out)
                    del pending[:whole]
                    yield b"".join(out)
            yield self._frame(key, index, bytes(pending), True)

        await self.inner.write(key, frames())
        return size

    async def read(self, key: str) -> AsyncIterator[bytes]:
        buf, index, ended = bytearray(), 0, False
        async for chunk in self.inner.read(key):
            buf += chunk
            at, out = 0, []
            while len(buf) - at >= 5 and not ended:
                length = int.from_bytes(buf[at : at + 4], "big")
                if len(buf) - at - 4 < length:
                    break
                flag = bytes(buf[at + 4 : at + 5])
                plain = self._keyring.open_binary(
                    bytes(buf[at + 5 : at + 4 + length]), f"{key}:{index}:".encode() + flag
                )
                if plain is None:
                    raise FileNotFoundError(f"blob {key} does not open with the configured keys")
                out.append(plain)
                at += 4 + length
                index += 1
                ended = flag == b"\x01"
            del buf[:at]
            if out:
                yield b"".join(out)
        if not ended or buf:
            raise FileNotFoundError(f"blob {key} is not whole")

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)
