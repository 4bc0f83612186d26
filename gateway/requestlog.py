"""The request log: each API request's record (what its log line holds, and optionally its bodies) in an
embedded SQLite database (the default) or in PostgreSQL (``request_log.store: postgres``).

The handler only appends a tuple to a bounded buffer; a writer (a thread for SQLite, a task writing through
asyncpg for PostgreSQL) inserts what has gathered every ``flush_interval_s`` in one batch and deletes
records older than ``retention_days``. A database slower than the traffic fills the buffer: further
records are dropped and counted (``gateway_request_log_dropped_total``), the requests themselves never wait.
``GET /admin/requests`` lists records, ``GET /admin/requests/{id}`` reads one with its bodies (admins only).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter

from errors import InvalidRequest, NotFound, PermissionDenied
from policies.record import RequestRecord

from .admin import principal, require_admin
from .config import GatewayConfig, RequestLogConfig
from .keys import GATEWAY, RECORD
from .logbodies import BODIES, BodyPolicy

DROPPED = Counter(
    "gateway_request_log_dropped_total", "Request log records dropped: its database fell behind"
)
# Each column with its PostgreSQL type (SQLite takes the names alone); the bodies last, kept only when logged
_SCHEMA = (
    ("ts", "double precision"),
    ("request_id", "text"),
    ("tenant", "text"),
    ("key_id", "text"),
    ("alias", "text"),
    ("deployment", "text"),
    ("endpoint", "text"),
    ("status", "integer"),
    ("stream", "boolean"),
    ("latency_ms", "double precision"),
    ("overhead_ms", "double precision"),
    ("ttft_ms", "double precision"),
    ("prompt_tokens", "bigint"),
    ("completion_tokens", "bigint"),
    ("cost_usd", "double precision"),
    ("saved_usd", "double precision"),
    ("cache", "text"),
    ("attempts", "text"),
    ("error", "text"),
    ("trace_id", "text"),
    ("request_body", "text"),
    ("response_body", "text"),
)
BODY_COLUMNS = ("request_body", "response_body")
COLUMNS = tuple(name for name, _ in _SCHEMA if name not in BODY_COLUMNS)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)",
    "CREATE INDEX IF NOT EXISTS requests_tenant_ts ON requests (tenant, ts)",
    "CREATE INDEX IF NOT EXISTS requests_request_id ON requests (request_id)",
)
_FILTERS = {
    "tenant": "tenant",
    "key_id": "key_id",
    "alias": "alias",
    "status": "status",
    "request_id": "request_id",
    "from": "ts >=",
    "to": "ts <",
}
_MAX_LIMIT = 1000
_SAVINGS = (
    "SELECT tenant, COUNT(*), SUM(CASE WHEN cache LIKE 'hit%' THEN 1 ELSE 0 END), COALESCE(SUM(saved_usd), 0) "
    "FROM requests{where} GROUP BY tenant ORDER BY tenant"
)
_RETENTION_EVERY_S = 60.0
_MOST_ROWS = 256  # records per INSERT (SqliteRequestLog._flush); sizes are powers of two, each prepared once

Row = tuple[Any, ...]


def _where(filters: dict[str, Any], placeholder: Callable[[int], str]) -> str:
    """``WHERE`` for the filters given (values bound in the filters' order)."""
    terms = []
    for i, name in enumerate(filters):
        column = _FILTERS[name]
        terms.append(
            f"{column} {placeholder(i)}" if column.endswith(("<", ">=")) else f"{column} = {placeholder(i)}"
        )
    return " WHERE " + " AND ".join(terms) if terms else ""


class RequestLog:
    """One process's request log: the buffer the requests append to, and its database (subclasses)."""

    def __init__(
        self,
        config: RequestLogConfig,
        clock: Callable[[], float] = time.time,
        bodies: BodyPolicy | None = None,
    ) -> None:
        self.config = config
        self.bodies = bodies
        self._clock = clock
        self._buffer: collections.deque[Row] = collections.deque()
        self._pruned = 0.0

    def add(
        self,
        record: RequestRecord,
        latency_s: float,
        status: int,
        bodies: tuple[bytes | None, bytes | None] | None = None,
    ) -> None:
        """Queue the record (on the event loop: a tuple and a deque append; bodies are redacted, cut and
        sealed by the writer)."""
        if len(self._buffer) >= self.config.max_buffer:
            DROPPED.inc()
            return
        trace = record.trace
        self._buffer.append(
            (
                self._clock(),
                record.request_id,
                record.tenant,
                record.key_id,
                record.alias,
                record.deployment,
                record.endpoint,
                status,
                record.stream,
                round(latency_s * 1000, 3),
                round(record.overhead_s * 1000, 3),
                None if record.ttft_s is None else round(record.ttft_s * 1000, 3),
                record.prompt_tokens,
                record.completion_tokens,
                record.cost_usd,
                record.saved_usd,
                record.cache,
                ",".join(record.attempts) or None,
                record.error,
                None if trace is None else trace.trace_id,
                bodies,
            )
        )

    def _take(self) -> list[Row]:
        """What the buffer holds, with the bodies made ready to store (off the event loop)."""
        rows = []
        buffer = self._buffer
        while buffer:
            rows.append(self._stored(buffer.popleft()))
        return rows

    def _stored(self, queued: Row) -> Row:
        """A queued record as its row: the bodies redacted, cut and sealed (or None, None)."""
        *row, bodies = queued
        if bodies is None or self.bodies is None:
            return (*row, None, None)
        return (*row, *self.bodies.stored(row[2], row[1], bodies))

    def _retention_due(self) -> float | None:
        """The cut-off time when a retention sweep is due."""
        now = self._clock()
        if now - self._pruned < _RETENTION_EVERY_S:
            return None
        self._pruned = now
        return now - self.config.retention_days * 86400

    @staticmethod
    def _out(row: Sequence[Any], with_bodies: bool) -> dict[str, Any]:
        out = dict(zip(COLUMNS, row, strict=False))
        out["stream"] = bool(out["stream"])  # SQLite keeps 0/1
        if with_bodies:
            out.update(zip(BODY_COLUMNS, row[len(COLUMNS) :], strict=True))
        return out

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Write what is left, then stop the writer."""
        raise NotImplementedError

    async def query(self, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        """Records matching the filters, newest first, without their bodies."""
        raise NotImplementedError

    async def get(self, request_id: str) -> dict[str, Any] | None:
        """The newest record of that request id, with its bodies as stored (sealed ones still sealed)."""
        raise NotImplementedError

    def erase(self, tenant: str) -> int:
        """Deletes the tenant's records; blocking: called off the event loop (gateway/security/erasure.py)."""
        raise NotImplementedError

    async def prune(self, days: dict[str, float], now: float) -> int:
        """Deletes each listed tenant's records older than its days (retention per tenant,
        gateway/security/retention.py); returns how many went."""
        raise NotImplementedError

    async def savings(self, tenant: str | None) -> list[dict[str, Any]]:
        """Per tenant over the records kept (``retention_days``): requests, cache hits and the dollars the
        hits saved (what their answers cost when made, at the deployment's price)."""
        raise NotImplementedError


@functools.cache
def _insert(rows: int) -> str:
    """An INSERT of that many records queued without bodies: each one's values, its bodies' None in
    request_body, NULL in response_body."""
    values = f"({', '.join('?' * (len(COLUMNS) + 1))}, NULL)"
    return f"INSERT INTO requests VALUES {', '.join([values] * rows)}"


class SqliteRequestLog(RequestLog):
    """SQLite in WAL mode, written by a thread with the standard ``sqlite3`` module."""

    def __init__(
        self,
        config: RequestLogConfig,
        clock: Callable[[], float] = time.time,
        bodies: BodyPolicy | None = None,
    ) -> None:
        super().__init__(config, clock, bodies)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)

    @property
    def path(self) -> Path:
        return Path(self.config.path).expanduser()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")  # readers (GET /admin/requests) do not block the writer
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def start_writer(self) -> None:
        """Makes the schema and starts the writer thread (blocking)."""
        with self._connect() as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS requests ({', '.join(COLUMNS + BODY_COLUMNS)})")
            present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
            for column in BODY_COLUMNS:  # a database made before bodies were logged
                if column not in present:
                    db.execute(f"ALTER TABLE requests ADD COLUMN {column}")
            for index in _INDEXES:
                db.execute(index)
        self._thread.start()

    def stop_writer(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    async def start(self) -> None:
        await asyncio.to_thread(self.start_writer)

    async def close(self) -> None:
        await asyncio.to_thread(self.stop_writer)

    def _run(self) -> None:
        db = self._connect()
        try:
            while not self._stop.wait(self.config.flush_interval_s):
                self._flush(db)
            self._flush(db)
        finally:
            db.close()

    def _flush(self, db: sqlite3.Connection) -> None:
        buffer = self._buffer
        queued = [buffer.popleft() for _ in range(len(buffer))]
        # Most records have no bodies: queued as they are, their last value (the bodies, None) fills
        # request_body. They go in many to an INSERT, bound at once from one flat list: ``executemany``
        # steps once per row and gives the GIL up and takes it back each time, and every one of those
        # takes made the event loop wait for it (the loop lost more to them than the writer spent).
        plain = [row for row in queued if row[-1] is None]
        most = min(_MOST_ROWS, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // (len(COLUMNS) + 1))
        with db:
            at = 0
            while at < len(plain):
                size = min(most, 1 << (len(plain) - at).bit_length() - 1)
                db.execute(_insert(size), list(chain.from_iterable(plain[at : at + size])))
                at += size
            if len(plain) < len(queued):
                rows = [self._stored(row) for row in queued if row[-1] is not None]
                db.executemany(f"INSERT INTO requests VALUES ({', '.join('?' * len(rows[0]))})", rows)
            cutoff = self._retention_due()
            if cutoff is not None:
                db.execute("DELETE FROM requests WHERE ts < ?", (cutoff,))

    def erase(self, tenant: str) -> int:
        # a record still in the buffer is written within one flush interval: a second pass after two takes it
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

    async def prune(self, days: dict[str, float], now: float) -> int:
        return await asyncio.to_thread(self._prune, days, now)

    def _prune(self, days: dict[str, float], now: float) -> int:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                return sum(
                    db.execute(
                        "DELETE FROM requests WHERE tenant = ? AND ts < ?", (tenant, now - d * 86400)
                    ).rowcount
                    for tenant, d in days.items()
                )
        except sqlite3.OperationalError:  # no table yet: the log has not started
            return 0
        finally:
            db.close()

    def _select(self, sql: str, values: Sequence[Any]) -> list[Row]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            return db.execute(sql, values).fetchall()
        finally:
            db.close()

    async def query(self, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM requests{_where(filters, lambda _: '?')} ORDER BY ts DESC LIMIT ?"
        rows = await asyncio.to_thread(self._select, sql, (*filters.values(), limit))
        return [self._out(row, False) for row in rows]

    async def get(self, request_id: str) -> dict[str, Any] | None:
        sql = f"SELECT {', '.join(COLUMNS + BODY_COLUMNS)} FROM requests WHERE request_id = ? ORDER BY ts DESC LIMIT 1"
        rows = await asyncio.to_thread(self._select, sql, (request_id,))
        return self._out(rows[0], True) if rows else None

    async def savings(self, tenant: str | None) -> list[dict[str, Any]]:
        sql = _SAVINGS.format(where=" WHERE tenant = ?" if tenant is not None else "")
        rows = await asyncio.to_thread(self._select, sql, () if tenant is None else (tenant,))
        return [_saved(row) for row in rows]


class PostgresRequestLog(RequestLog):
    """PostgreSQL through asyncpg (``request_log.dsn``): a task on the event loop copies each batch in with
    ``COPY`` (binary, one round trip); bodies are prepared in a thread first. Several replicas share one table."""

    def __init__(
        self,
        config: RequestLogConfig,
        clock: Callable[[], float] = time.time,
        bodies: BodyPolicy | None = None,
    ) -> None:
        super().__init__(config, clock, bodies)
        self._pool: Any = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()

    async def start(self) -> None:
        import asyncpg  # only with store: postgres

        assert self.config.dsn is not None
        self._pool = await asyncpg.create_pool(self.config.dsn, min_size=1, max_size=4, command_timeout=30)
        columns = ", ".join(f"{name} {kind}" for name, kind in _SCHEMA)
        async with self._pool.acquire() as db:
            # one replica at a time makes the schema (CREATE ... IF NOT EXISTS races on the catalog)
            async with db.transaction():
                await db.execute("SELECT pg_advisory_xact_lock(2105)")
                await db.execute(f"CREATE TABLE IF NOT EXISTS requests ({columns})")
                for index in _INDEXES:
                    await db.execute(index)
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="request-log")

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            await self._task
        if self._pool is not None:
            await self._pool.close()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._closing.wait(), self.config.flush_interval_s)
            except TimeoutError:
                pass
            try:
                await self.flush()
            except Exception as exc:  # the database away: the records of this batch are lost, counted
                from .logs import get_logger

                get_logger().warning("request log write failed", error=f"{type(exc).__name__}: {exc}")
            if self._closing.is_set():
                return

    async def flush(self) -> None:
        """Writes what the buffer holds now (and sweeps old records when due)."""
        async with self._lock:
            if self._buffer and self.bodies is not None:
                rows = await asyncio.to_thread(self._take)  # redaction and sealing: CPU, off the loop
            else:
                rows = self._take()
            cutoff = self._retention_due()
            if not rows and cutoff is None:
                return
            async with self._pool.acquire() as db:
                try:
                    if rows:
                        await db.copy_records_to_table(
                            "requests", records=rows, columns=COLUMNS + BODY_COLUMNS
                        )
                    if cutoff is not None:
                        await db.execute("DELETE FROM requests WHERE ts < $1", cutoff)
                except Exception:
                    DROPPED.inc(len(rows))
                    raise

    def erase(self, tenant: str) -> int:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._erase(tenant), self._loop).result(timeout=60)

    async def prune(self, days: dict[str, float], now: float) -> int:
        pruned = 0
        async with self._pool.acquire() as db:
            for tenant, d in days.items():
                status = await db.execute(
                    "DELETE FROM requests WHERE tenant = $1 AND ts < $2", tenant, now - d * 86400
                )
                pruned += int(status.split()[-1])
        return pruned

    async def _erase(self, tenant: str) -> int:
        await self.flush()  # what the buffer holds goes in first, then goes
        async with self._pool.acquire() as db:
            status = await db.execute("DELETE FROM requests WHERE tenant = $1", tenant)
        return int(status.split()[-1])

    async def query(self, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM requests{_where(filters, lambda i: f'${i + 1}')} "
            f"ORDER BY ts DESC LIMIT ${len(filters) + 1}"
        )
        values = [int(v) if name == "status" else v for name, v in filters.items()]
        async with self._pool.acquire() as db:
            rows = await db.fetch(sql, *values, limit)
        return [self._out(tuple(row), False) for row in rows]

    async def get(self, request_id: str) -> dict[str, Any] | None:
        async with self._pool.acquire() as db:
            row = await db.fetchrow(
                f"SELECT {', '.join(COLUMNS + BODY_COLUMNS)} FROM requests "
                "WHERE request_id = $1 ORDER BY ts DESC LIMIT 1",
                request_id,
            )
        return None if row is None else self._out(tuple(row), True)

    async def savings(self, tenant: str | None) -> list[dict[str, Any]]:
        sql = _SAVINGS.format(where=" WHERE tenant = $1" if tenant is not None else "")
        async with self._pool.acquire() as db:
            rows = await db.fetch(sql, *(() if tenant is None else (tenant,)))
        return [_saved(tuple(row)) for row in rows]


def _saved(row: Sequence[Any]) -> dict[str, Any]:
    tenant, requests, hits, saved = row
    return {
        "tenant": tenant,
        "requests": int(requests),
        "cache_hits": int(hits or 0),
        "saved_usd": float(saved),
    }


def build(config: GatewayConfig, clock: Callable[[], float] = time.time) -> RequestLog | None:
    """The configured request log; None when ``request_log.enabled`` is false."""
    settings = config.request_log
    if not settings.enabled:
        return None
    bodies = BodyPolicy.of(config) if BodyPolicy.wanted(config) else None
    kind = PostgresRequestLog if settings.store == "postgres" else SqliteRequestLog
    return kind(settings, clock, bodies)


REQUEST_LOG = web.AppKey("request_log", RequestLog)


async def handle(request: web.Request) -> web.Response:
    """``GET /admin/requests?tenant=&key_id=&alias=&status=&request_id=&from=&to=&limit=``: the newest records
    first; ``from``/``to`` in Unix seconds. An admin key reads every tenant, a tenant key its own."""
    who = principal(request)
    query = request.query
    unknown = set(query) - set(_FILTERS) - {"limit"}
    if unknown:
        raise InvalidRequest(
            f"Unknown filter {sorted(unknown)[0]!r}; filters: {', '.join(_FILTERS)}, limit.",
            param=sorted(unknown)[0],
        )
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
    rows = [] if log is None else await log.query(filters, limit)
    return _json(request, {"object": "list", "data": rows})


async def handle_one(request: web.Request) -> web.Response:
    """``GET /admin/requests/{id}``: one record with its request and response bodies (admin keys only; a
    body sealed with a key no longer configured reads as null with ``*_sealed: true``)."""
    require_admin(request)
    request_id = request.match_info["id"]
    log = request.app.get(REQUEST_LOG)
    row = None if log is None else await log.get(request_id)
    if row is None:
        raise NotFound(f"No logged request {request_id!r}.", param="id")
    policy = (
        log.bodies
        if log is not None and log.bodies is not None
        else BodyPolicy.of(request.app[GATEWAY].loaded.config)
    )
    for column in BODY_COLUMNS:
        text, sealed = await asyncio.to_thread(policy.shown, row[column], row["request_id"], column)
        row[column] = text
        if sealed:
            row[f"{column}_sealed"] = True
    return _json(request, row)


async def handle_savings(request: web.Request) -> web.Response:
    """``GET /admin/cache/savings``: per tenant over the request log's records, the cache hits and the dollars
    they saved; an admin key reads every tenant, a tenant key its own."""
    who = principal(request)
    log = request.app.get(REQUEST_LOG)
    rows = [] if log is None else await log.savings(None if who.admin else who.tenant)
    return _json(
        request,
        {
            "object": "list",
            "data": rows,
            "total_saved_usd": sum(r["saved_usd"] for r in rows),
            "retention_days": None if log is None else log.config.retention_days,
        },
    )


def _json(request: web.Request, body: dict[str, Any]) -> web.Response:
    request[RECORD].status = 200
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"x-request-id": request[RECORD].request_id},
    )


def _number(query: Any, name: str) -> float:
    try:
        return float(query[name])
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, not {query[name]!r}.", param=name) from None


__all__ = [
    "BODIES",
    "DROPPED",
    "REQUEST_LOG",
    "PostgresRequestLog",
    "RequestLog",
    "SqliteRequestLog",
    "build",
    "handle",
    "handle_one",
    "handle_savings",
]
