"""The audit log: every admin action, denied admin request, key change and config reload, one JSON object
per line, append-only and hash-chained.

Each record carries the SHA-256 of the record before it (``prev``) and its own (``hash``, over the record's
canonical JSON without ``hash``), so editing, inserting or deleting a record breaks the chain where it
happened: ``python -m gateway audit verify`` finds the first broken line. Worker processes append to one
file under an exclusive lock (``flock``), so the chain runs across them. Retention drops whole records from
the head only; the first kept record's ``prev`` is then the anchor the verifier reports.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

GENESIS = "0" * 64
_RETENTION_EVERY = 1000  # records appended between retention passes


def _digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class AuditLog:
    def __init__(self, path: str, retention_days: float, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path).expanduser()
        self.retention_days = retention_days
        self._clock = clock
        self._lock = asyncio.Lock()
        self._appended = 0

    async def record(self, action: str, *, actor: str, outcome: str = "ok", **details: Any) -> None:
        """Appends one record (off the event loop; records of one process keep their order)."""
        async with self._lock:
            await asyncio.to_thread(
                self._append,
                {"ts": self._clock(), "action": action, "actor": actor, "outcome": outcome, **details},
            )

    def _append(self, fields: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                record = {**fields, "prev": _last_hash(file)}
                record["hash"] = _digest(record)
                file.seek(0, os.SEEK_END)
                file.write(orjson.dumps(record) + b"\n")
                file.flush()
                os.fsync(file.fileno())
                self._appended += 1
                if self._appended % _RETENTION_EVERY == 1:
                    self._prune(file)
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    def _prune(self, file: Any) -> None:
        cutoff = self._clock() - self.retention_days * 86400
        file.seek(0)
        lines = file.read().splitlines(keepends=True)
        kept = [line for line in lines if orjson.loads(line).get("ts", 0) >= cutoff]
        if len(kept) < len(lines):
            file.seek(0)
            file.truncate()
            file.write(b"".join(kept))
            file.flush()
            os.fsync(file.fileno())

    def read(self, start: float = 0, end: float = float("inf")) -> list[dict[str, Any]]:
        return [r for r in records(self.path) if start <= r.get("ts", 0) < end]


def _last_hash(file: Any) -> str:
    file.seek(0, os.SEEK_END)
    size = file.tell()
    if size == 0:
        return GENESIS
    chunk = min(size, 65536)
    file.seek(size - chunk)
    last = file.read(chunk).rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return str(orjson.loads(last)["hash"])


def records(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as file:
        for line in file:
            if line.strip():
                yield orjson.loads(line)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    count: int
    anchor: str  # the first record's prev: GENESIS unless retention dropped older records
    problem: str | None = None


def verify(path: Path) -> Verdict:
    """Checks every record's hash and its link to the record before it."""
    prev: str | None = None
    anchor = GENESIS
    count = 0
    try:
        with path.open("rb") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    return Verdict(False, count, anchor, f"line {number}: not JSON")
                if prev is None:
                    anchor = str(record.get("prev"))
                elif record.get("prev") != prev:
                    return Verdict(
                        False,
                        count,
                        anchor,
                        f"line {number}: prev does not match the record before "
                        "(a record was removed, inserted or reordered)",
                    )
                if record.get("hash") != _digest(record):
                    return Verdict(
                        False,
                        count,
                        anchor,
                        f"line {number}: hash does not match its content (the record was edited)",
                    )
                prev = record["hash"]
                count += 1
    except FileNotFoundError:
        return Verdict(False, 0, anchor, f"{path}: no such file")
    return Verdict(True, count, anchor)


AUDIT = web.AppKey("audit", AuditLog)


async def handle(request: web.Request) -> web.Response:
    """``GET /admin/audit?from=&to=`` (Unix seconds): the records in that window, oldest first, and whether the
    whole file's chain verifies. Needs the ``audit.read`` permission (the access middleware checks it)."""
    from errors import InvalidRequest, NotFound

    from ..admin import require_admin
    from ..keys import RECORD

    require_admin(request)
    log = request.app.get(AUDIT)
    if log is None:
        raise NotFound("The audit log is off (audit.enabled: false).")
    try:
        start, end = float(request.query.get("from", 0)), float(request.query.get("to", "inf"))
    except ValueError as exc:
        raise InvalidRequest("from/to: Unix seconds", param="from") from exc
    data, verdict = await asyncio.to_thread(lambda: (log.read(start, end), verify(log.path)))
    request[RECORD].status = 200
    return web.Response(
        body=orjson.dumps(
            {
                "object": "list",
                "data": data,
                "chain": {
                    "ok": verdict.ok,
                    "records": verdict.count,
                    "anchor": verdict.anchor,
                    "problem": verdict.problem,
                },
            }
        ),
        content_type="application/json",
        headers={"x-request-id": request[RECORD].request_id},
    )


async def config_changed(log: AuditLog, old: Any, new: Any, path: str | None) -> None:
    """A reload's record, and one per key added or removed (tenant keys and admin keys, by key id)."""
    await log.record("config.reloaded", actor="system", config=path)
    for owner, before, after in [("admin", set(old.admin.keys), set(new.admin.keys))] + [
        (
            f"tenant:{name}",
            {k for t in old.tenants if t.name == name for k in t.keys},
            {k for t in new.tenants if t.name == name for k in t.keys},
        )
        for name in {t.name for t in old.tenants} | {t.name for t in new.tenants}
    ]:
        for key in sorted(after - before):
            await log.record("key.added", actor="system", owner=owner, key_id=key[7:19])
        for key in sorted(before - after):
            await log.record("key.removed", actor="system", owner=owner, key_id=key[7:19])
