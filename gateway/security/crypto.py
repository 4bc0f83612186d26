"""Data at rest: AES-256-GCM (PyCA ``cryptography``) for stored bodies, with key ids so keys can rotate.

A sealed value is ``gwenc1.<key id>.<base64 of the 12-byte nonce, ciphertext and tag>`` (text: the store layer's
Redis client decodes values as UTF-8); the first configured key seals,
every configured key opens (rotation: put the new key first, keep the old ones until what they sealed has
expired). What a value is stored under (a cache entry's key) is bound in as associated data, so a value
moved to another key, or another tenant's, does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from policies.cache.exact import AnswerStore

from .config import EncryptionConfig

MAGIC = b"gwenc1."


class DataKeyError(ValueError):
    """A key that cannot be read or is not 32 bytes of base64."""


class Keyring:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise DataKeyError("encryption.keys: at least one key")
        self._sealing = keys[0][0]
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}

    @classmethod
    def load(cls, config: EncryptionConfig, env: Mapping[str, str] = os.environ) -> Keyring:
        """Reads each key from its environment variable or file (base64 of 32 random bytes:
        ``python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"``)."""
        keys = []
        for i, key in enumerate(config.keys):
            where = f"encryption.keys[{i}]"
            if key.env is not None:
                text = env.get(key.env)
                if not text:
                    raise DataKeyError(f"{where}: environment variable {key.env} is not set")
            else:
                assert key.file is not None
                try:
                    text = Path(key.file).read_text().strip()
                except OSError as exc:
                    raise DataKeyError(f"{where}: cannot read {key.file}: {exc.strerror}") from exc
            try:
                raw = base64.b64decode(text, validate=True)
            except binascii.Error as exc:
                raise DataKeyError(f"{where}: not base64") from exc
            if len(raw) != 32:
                raise DataKeyError(f"{where}: a key is 32 bytes (AES-256), this one is {len(raw)}")
            keys.append((key.id, raw))
        return cls(keys)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        sealed = self._ciphers[self._sealing].encrypt(nonce, plaintext, context)
        return MAGIC + self._sealing.encode() + b"." + base64.b64encode(nonce + sealed)

    def seal_binary(self, plaintext: bytes, context: bytes) -> bytes:
        """``seal`` without the text armour (files): key id length, key id, nonce, ciphertext and tag."""
        key_id = self._sealing.encode()
        nonce = os.urandom(12)
        return (
            bytes([len(key_id)])
            + key_id
            + nonce
            + self._ciphers[self._sealing].encrypt(nonce, plaintext, context)
        )

    def open_binary(self, blob: bytes, context: bytes) -> bytes | None:
        if not blob:
            return None
        end = 1 + blob[0]
        cipher = self._ciphers.get(blob[1:end].decode(errors="replace"))
        if cipher is None or len(blob) < end + 12 + 16:
            return None
        try:
            return cipher.decrypt(blob[end : end + 12], blob[end + 12 :], context)
        except InvalidTag:
            return None

    def open(self, blob: bytes, context: bytes) -> bytes | None:
        """The plaintext; None for a value not sealed here, sealed with a key no longer configured, or altered."""
        if not blob.startswith(MAGIC):
            return None
        key_id, dot, text = blob[len(MAGIC) :].partition(b".")
        cipher = self._ciphers.get(key_id.decode(errors="replace")) if dot else None
        try:
            rest = base64.b64decode(text, validate=True)
        except binascii.Error:
            return None
        if cipher is None or len(rest) < 12 + 16:
            return None
        try:
            return cipher.decrypt(rest[:12], rest[12:], context)
        except InvalidTag:
            return None


def keyring(config: EncryptionConfig) -> Keyring:
    """The config's keyring; a key that cannot be read is a config error (start-up or reload refused)."""
    from ..config import ConfigError

    try:
        return Keyring.load(config)
    except DataKeyError as exc:
        raise ConfigError([str(exc)]) from exc


class Sealer:
    """Text sealed for storage and opened again, or passed as it is when ``encryption`` is not configured: the
    one helper every store of bodies uses (stored responses; the request log's bodies). ``context`` is what the
    value is stored under (a row's or key's id): bound in, so a value moved elsewhere does not open.

        sealer = crypto.sealer(config.encryption)      # once, at start-up
        column = sealer.seal(body_text, request_id)    # to store
        text = sealer.open(column, request_id)         # None: sealed with a key no longer configured, or altered
    """

    def __init__(self, keyring: Keyring | None) -> None:
        self._keyring = keyring

    @property
    def on(self) -> bool:
        return self._keyring is not None

    def seal(self, text: str, context: str) -> str:
        if self._keyring is None:
            return text
        return self._keyring.seal(text.encode(), context.encode()).decode()

    def open(self, value: str, context: str) -> str | None:
        if self._keyring is None:
            return None if value.startswith(MAGIC.decode()) else value
        opened = self._keyring.open(value.encode(), context.encode())
        return None if opened is None else opened.decode()


def sealer(config: EncryptionConfig | None) -> Sealer:
    """The sealer for ``config`` (None: encryption off, values pass as they are)."""
    return Sealer(None if config is None else keyring(config))


class EncryptedAnswers:
    """The exact cache's answers, sealed on the way in and opened on the way out (a value that does not open,
    such as one written before encryption was on, is a miss)."""

    def __init__(self, inner: AnswerStore, keyring: Keyring) -> None:
        self.inner = inner
        self._keyring = keyring

    async def get(self, key: str) -> bytes | None:
        blob = await self.inner.get(key)
        return None if blob is None else self._keyring.open(blob, key.encode())

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.inner.set(key, self._keyring.seal(value, key.encode()), ttl_s)

    async def purge(self, tenant: str, alias: str | None = None) -> int:
        return await self.inner.purge(tenant, alias)
