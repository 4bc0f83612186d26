"""The request log: each API request's record (what its log line holds) in an embedded SQLite database.

The handler only appends a tuple to a bounded buffer; a writer thread inserts what has gathered every
``flush_interval_s`` in one transaction and deletes records older than ``retention_days``. A database
slower than the traffic fills the buffer: further records are dropped and counted
(``gateway_request_log_dropped_total``), the requests themselves never wait. ``GET /admin/requests`` reads it.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter

from errors import InvalidRequest, PermissionDenied
from policies.record import RequestRecord

from .admin import principal
from .config import RequestLogConfig
from .keys import RECORD

DROPPED = Counter("gateway_request_log_dropped_total", "Request log records dropped: its database fell behind")
COLUMNS = ("ts", "request_id", "tenant", "key_id", "alias", "deployment", "endpoint", "status", "stream",
           "latency_ms", "overhead_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd",
           "cache", "attempts", "error", "trace_id")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests ({", ".join(COLUMNS)});
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_tenant_ts ON requests (tenant, ts);
CREATE INDEX IF NOT EXISTS requests_request_id ON requests (request_id);
"""
_INSERT = f"INSERT INTO requests VALUES ({', '.join('?' * len(COLUMNS))})"
_FILTERS = {"tenant": "tenant = ?", "key_id": "key_id = ?", "alias": "alias = ?", "status": "status = ?",
            "request_id": "request_id = ?", "from": "ts >= ?", "to": "ts < ?"}
_MAX_LIMIT = 1000
_RETENTION_EVERY_S = 60.0


class RequestLog:
    """One process's writer of the request log."""

    def __init__(self, config: RequestLogConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._buffer: collections.deque[tuple[Any, ...]] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._pruned = 0.0

    def start(self) -> None:
        with self._connect() as db:
            db.executescript(_SCHEMA)
        self._thread.start()

    def add(self, record: RequestRecord, latency_s: float, status: int) -> None:
        """Queue the record (on the event loop: a tuple and a deque append)."""
        if len(self._buffer) >= self.config.max_buffer:
            DROPPED.inc()
            return
        trace = record.trace
        self._buffer.append((
            self._clock(), record.request_id, record.tenant, record.key_id, record.alias, record.deployment,
            record.endpoint, status, record.stream, round(latency_s * 1000, 3), round(record.overhead_s * 1000, 3),
            None if record.ttft_s is None else round(record.ttft_s * 1000, 3), record.prompt_tokens,
            record.completion_tokens, record.cost_usd, record.saved_usd, record.cache,
            ",".join(record.attempts) or None, record.error, None if trace is None else trace.trace_id))

    def close(self) -> None:
        """Write what is left, then stop the writer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def path(self) -> Path:
        return Path(self.config.path).expanduser()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")  # readers (GET /admin/requests) do not block the writer
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _run(self) -> None:
        db = self._connect()
        try:
            while not self._stop.wait(self.config.flush_interval_s):
                self._flush(db)
            self._flush(db)
        finally:
            db.close()

    def _flush(self, db: sqlite3.Connection) -> None:
        rows = []
        buffer = self._buffer
        while buffer:
            rows.append(buffer.popleft())
        now = self._clock()
        with db:
            if rows:
                db.executemany(_INSERT, rows)
            if now - self._pruned >= _RETENTION_EVERY_S:
                self._pruned = now
                db.execute("DELETE FROM requests WHERE ts < ?", (now - self.config.retention_days * 86400,))

    def erase(self, tenant: str) -> int:
        """Deletes the tenant's records (blocking: run it off the loop); a record still in the buffer is written
        within one flush interval, so a second pass after two intervals takes it too."""
        erased = 0
        for attempt in range(2):
            if attempt:
                self._stop.wait(2 * self.config.flush_interval_s)
            db = sqlite3.connect(self.path, timeout=30)
            try:
                with db:
                    erased += db.execute("DELETE FROM requests WHERE tenant = ?", (tenant,)).rowcount
            finally:
                db.close()
        return erased

    def query(self, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        where = [_FILTERS[name] for name in filters]
        sql = "SELECT * FROM requests" + (" WHERE " + " AND ".join(where) if where else "") + \
            " ORDER BY ts DESC LIMIT ?"
        db = sqlite3.connect(self.path, timeout=30)
        try:
            rows = db.execute(sql, (*filters.values(), limit)).fetchall()
        finally:
            db.close()
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


REQUEST_LOG = web.AppKey("request_log", RequestLog)


async def handle(request: web.Request) -> web.Response:
    """``GET /admin/requests?tenant=&key_id=&alias=&status=&request_id=&from=&to=&limit=``: the newest records
    first; ``from``/``to`` in Unix seconds. An admin key reads every tenant, a tenant key its own."""
    who = principal(request)
    query = request.query
    unknown = set(query) - set(_FILTERS) - {"limit"}
    if unknown:
        raise InvalidRequest(f"Unknown filter {sorted(unknown)[0]!r}; filters: {', '.join(_FILTERS)}, limit.",
                             param=sorted(unknown)[0])
    filters: dict[str, Any] = {}
    for name in _FILTERS:
        if name in query:
            filters[name] = _number(query, name) if name in ("status", "from", "to") else query[name]
    if not who.admin:
        if filters.get("tenant", who.tenant) != who.tenant:
            raise PermissionDenied("A tenant key reads only its own tenant's requests.")
        filters["tenant"] = who.tenant
    limit = int(_number(query, "limit")) if "limit" in query else 100
    if not 1 <= limit <= _MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {_MAX_LIMIT}.", param="limit")
    log = request.app.get(REQUEST_LOG)
    rows = [] if log is None else await asyncio.to_thread(log.query, filters, limit)
    request[RECORD].status = 200
    return web.Response(body=orjson.dumps({"object": "list", "data": rows}), content_type="application/json",
                        headers={"x-request-id": request[RECORD].request_id})


def _number(query: Any, name: str) -> float:
    try:
        return float(query[name])
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, not {query[name]!r}.", param=name) from None
