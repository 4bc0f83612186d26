"""The trace exporter in a process of its own: OTLP encoding and posting off the gateway process's GIL.

With the exporter as a thread of the gateway's process (``otlp.BatchExporter``), its encoding (~10 µs a
request of four spans) took the GIL from the event loop, and the loop paid for it beyond those 10 µs: with
the spans queued but never encoded, a traced request cost the loop 14 µs more than untraced instead of 23
(docs/operations.md, "The exporter in its own process"). Here the worker keeps the request traces
(``tracing.RequestTrace``: flat tuples of plain values) in a list; every ``batch`` traces, or at the next
tick (``tick_s``) when traffic is light, it serializes the list with ``marshal`` (one C call: ~10,400
instructions a trace under callgrind, against ~19,100 for ``pickle``; JSON cannot hold a 128-bit trace id)
and writes it, length-prefixed, to a non-blocking pipe. A child process (``python -m gateway.trace_export``,
one per gateway process) reads the pipe and feeds ``otlp.BatchExporter``, which encodes (``RequestEncoder``)
and posts with retry as before, on the child's own GIL.

The worker never waits for the child: what does not fit in the pipe (1 MiB when the kernel allows it) waits
in a buffer of at most ``max_queue`` spans and is written at the next batch or tick; beyond that, spans are
dropped and counted (``gateway_trace_spans_dropped_total{reason="queue_full"}``). The child reports after
each flush and each batch it exports: spans exported, failed at the collector, dropped by its queue; the
worker reads those reports (non-blocking) at its ticks and counts the failures under ``reason="collector"``
and ``reason="exporter_queue"``. A child that dies (a write finds the pipe broken, or a tick finds it gone)
is counted (``gateway_trace_exporter_restarts_total``), with the spans it had been handed and had not
reported done (``reason="exporter_died"``), and started again after a backoff (1 s doubling to 30 s);
meanwhile traces are dropped (``reason="exporter_down"``) rather than held.

Shutdown (``shutdown``, from the app's cleanup, off the loop) writes what is buffered, closes the pipe and
waits for the child: on end of input it sends everything it holds, reports and exits. The child ignores
SIGTERM, SIGINT and SIGHUP: a signal sent to the whole process group (a terminal's Ctrl-C, a service
manager stopping the group) stops the worker, which then closes the pipe, instead of killing the exporter
with spans in it. A worker killed outright closes the pipe too (the kernel does), so the child never
outlives its worker by more than its last export's timeout.
"""

from __future__ import annotations

import fcntl
import logging
import marshal
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter

DROPPED = Counter(
    "gateway_trace_spans_dropped_total",
    "Finished spans not exported: queue_full (the exporter process fell behind), exporter_down / "
    "exporter_died (it was not running, or died holding them), exporter_queue (its own queue was full), "
    "collector (the collector refused them or did not answer within the timeout)",
    ["reason"],
)
RESTARTS = Counter(
    "gateway_trace_exporter_restarts_total", "Trace exporter processes that died and were started again"
)
_FRAME = struct.Struct("<I")  # each message's length, then its format and its bytes (``_frame``)
_MARSHAL, _PICKLE = b"m", b"p"
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PIPE_BYTES = 1 << 20
_FIRST_BACKOFF_S, _MAX_BACKOFF_S = 1.0, 30.0
_NO_LOOP = object()  # added to outside a running event loop: no tick
log = logging.getLogger(__name__)


def _child_environment() -> dict[str, str]:
    """The worker's environment, with this checkout first on the path (its imports must find the packages
    the worker runs, wherever it was started from) and without the metrics directory (the child has no
    metrics of its own: the worker counts from its reports)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _spans(trace: Any) -> int:
    return len(trace[1]) + 1  # a request trace's stages and the request's own span


class ExporterProcess:
    """The worker's side: a buffer of request traces, the pipe to the exporter process, and its reports.

    ``add`` runs on the event loop; ``force_flush`` and ``shutdown`` may run on another thread (the app's
    cleanup runs ``Tracing.close`` in one), so the buffer and the pipe are under a lock, which ``add``
    takes for an append (uncontended: ~0.1 µs)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        max_queue: int,
        tick_s: float = 1.0,
        batch: int = 128,
        timeout_s: float = 10.0,
    ) -> None:
        """``settings``: what the child needs (``child_main``): endpoint, headers, timeout_s, max_queue,
        interval_s, resource, scope, and ``discard`` (benches: encode, post nothing)."""
        self.settings = dict(settings)
        self.max_queue, self.tick_s, self.batch, self.timeout_s = max_queue, tick_s, batch, timeout_s
        self._lock = threading.Lock()
        self._traces: list[Any] = []
        self._count = 0  # their spans
        self._pending = bytearray()  # batches (``_frame``) the pipe had no room for yet
        self._pending_spans = 0
        self._seq = 0  # the last batch's number
        self._written = 0  # spans handed to the current child (written into its pipe)
        self._report: dict[str, int] = {}  # the current child's last report
        self._reports = bytearray()  # its report bytes not yet parsed
        self._counted = {"collector": 0, "exporter_queue": 0}  # of its reports, already counted
        self._process: subprocess.Popen[bytes] | None = None
        self._backoff_s = _FIRST_BACKOFF_S
        self._restart_at = 0.0
        self._started_at = 0.0
        self._timer: Any = None
        self._stopping = False
        self.deaths = 0
        self.dropped_by: dict[str, int] = {}  # spans this exporter dropped, by reason (tests, benches)
        self._start()

    # -- the child ----------------------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the child (its stdin: our batches; its stdout: its reports) and send it its settings."""
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.trace_export"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_environment(),
        )
        assert process.stdin is not None and process.stdout is not None
        for stream in (process.stdin, process.stdout):
            os.set_blocking(stream.fileno(), False)
        try:
            fcntl.fcntl(process.stdin.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:  # above /proc/sys/fs/pipe-max-size: the default 64 KiB, and the buffer behind it
            pass
        self._process, self._written, self._report = process, 0, {}
        self._reports.clear()
        self._counted = {"collector": 0, "exporter_queue": 0}
        self._started_at = time.monotonic()
        self._pending[:0] = self._frame(self.settings)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _died(self) -> None:
        """The child is gone: count what it held, and start another after the backoff."""
        process = self._process
        if process is None:
            return
        self._read_reports()
        self._process = None
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            process.kill()
        lost = self._written - self._report.get("done", 0) + self._pending_spans
        self._pending.clear()
        self._pending_spans = 0
        if self._stopping:
            if lost > 0:
                self._drop("exporter_died", lost)
            return
        self.deaths += 1
        RESTARTS.inc()
        if lost > 0:
            self._drop("exporter_died", lost)
        if time.monotonic() - self._started_at > 60:  # it had lived a while: not a crash loop
            self._backoff_s = _FIRST_BACKOFF_S
        self._restart_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _MAX_BACKOFF_S)
        log.error(
            "the trace exporter process died (exit code %s); %d spans lost; restarting in %.1f s",
            process.returncode,
            lost,
            self._restart_at - time.monotonic(),
        )

    def _alive(self) -> bool:
        """Whether a child is running, starting one whose backoff has passed."""
        if self._process is not None:
            if self._process.poll() is None:
                return True
            self._died()
        if self._stopping or time.monotonic() < self._restart_at:
            return False
        try:
            self._start()
        except OSError:
            log.exception("could not start the trace exporter process")
            self._restart_at = time.monotonic() + self._backoff_s
            return False
        return True

    # -- batches ------------------------------------------------------------------------------------------

    @staticmethod
    def _frame(message: Any) -> bytes:
        return _frame(message)

    def add(self, trace: Any, count: int | None = None) -> None:
        """Buffer a request's trace; every ``batch`` of them goes to the child. On the event loop: an append,
        and once per batch a ``marshal`` and a write."""
        with self._lock:
            if self._stopping:  # (after the drain: none come)
                self._drop("exporter_down", _spans(trace) if count is None else count)
                return
            traces = self._traces
            traces.append(trace)
            self._count += _spans(trace) if count is None else count
            if len(traces) >= self.batch:
                self._ship(False)
            elif self._timer is None:
                self._arm()

    def _arm(self) -> None:
        """A tick on the running loop (none outside one: then batches and flushes alone ship the traces)."""
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._timer = _NO_LOOP  # not tried again for every trace
            return
        self._timer = loop.call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        """Ship what waits, and read the child's reports; re-armed while traces keep coming."""
        with self._lock:
            self._timer = None
            if self._stopping:  # shutdown writes and reads for itself
                return
            if self._traces or self._pending:
                self._ship(False)
                self._arm()
            self._read_reports()
            if self._process is not None and self._process.poll() is not None:
                self._died()

    def _ship(self, flush: bool) -> int:
        """Hand the buffered traces (and a flush request, with ``flush``) to the child; the batch's number."""
        traces, self._traces = self._traces, []
        count, self._count = self._count, 0
        if not self._alive():
            if count:
                self._drop("exporter_down", count)
            return -1
        if self._pending_spans + count > self.max_queue:  # the child fell behind by a queue: these go
            self._drop("queue_full", count)
            traces, count = [], 0
            if not flush:
                self._write()
                return self._seq
        self._seq += 1
        self._pending += self._frame((self._seq, flush, traces))
        self._pending_spans += count
        self._write()
        return self._seq

    def _write(self) -> None:
        """Write what the pipe takes, without waiting."""
        process = self._process
        if not self._pending or process is None or process.stdin is None:
            return
        try:
            written = os.write(process.stdin.fileno(), self._pending)
        except BlockingIOError:
            return
        except (BrokenPipeError, OSError):
            self._died()
            return
        if written == len(self._pending):
            self._written += self._pending_spans
            self._pending.clear()
            self._pending_spans = 0
        else:  # a part: its spans are counted as written once all of it is
            del self._pending[:written]

    def _read_reports(self) -> None:
        """Take in the child's reports (non-blocking), and count the spans it could not export."""
        process = self._process
        if process is None or process.stdout is None:
            return
        while True:
            try:
                data = os.read(process.stdout.fileno(), 65536)
            except BlockingIOError:
                break
            except OSError:
                return
            if not data:
                break
            self._reports += data
        reports = self._reports
        while len(reports) >= _FRAME.size:
            (size,) = _FRAME.unpack_from(reports)
            if len(reports) < _FRAME.size + size:
                break
            self._report = _loads(bytes(reports[_FRAME.size : _FRAME.size + size]))
            del reports[: _FRAME.size + size]
        for reason in ("collector", "exporter_queue"):
            more = self._report.get(reason, 0) - self._counted[reason]
            if more > 0:
                self._drop(reason, more)
                self._counted[reason] += more

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Hand everything over and wait until the child has exported it (or failed to); True once it has."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            seq = self._ship(True)
        if seq < 0:
            return False
        while True:
            with self._lock:
                self._write()
                self._read_reports()
                if self._report.get("flushed", 0) >= seq:
                    return True
                process = self._process
                if process is None or process.poll() is not None:
                    self._died()
                    return False
                fds = [process.stdout.fileno()] if process.stdout is not None else []
                writing = [process.stdin.fileno()] if self._pending and process.stdin is not None else []
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select(fds, writing, [], min(left, 0.05))

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Write what is buffered, close the pipe and wait for the child to send it all and exit."""
        if timeout_s is None:
            timeout_s = self.timeout_s + 5.0
        deadline = time.monotonic() + timeout_s
        with self._lock:
            if self._timer is not None and self._timer is not _NO_LOOP:
                self._timer.cancel()
            self._timer = None
            if self._traces:
                self._ship(False)
            self._stopping = True
            process = self._process
        while process is not None and self._pending and time.monotonic() < deadline:
            with self._lock:
                self._write()
            if self._pending and process.stdin is not None and self._process is not None:
                select.select([], [process.stdin.fileno()], [], 0.05)
            process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("the trace exporter process did not finish within %.0f s: killed", timeout_s)
            process.kill()
            process.wait()
        with self._lock:
            self._read_reports()
            lost = self._written - self._report.get("done", 0)
            if lost > 0:
                self._drop("exporter_died", lost)
            if process.stdout is not None:
                process.stdout.close()
            self._process = None

    def _drop(self, reason: str, count: int) -> None:
        DROPPED.labels(reason).inc(count)
        self.dropped_by[reason] = self.dropped_by.get(reason, 0) + count

    @property
    def dropped(self) -> int:
        """Spans dropped, all reasons."""
        return sum(self.dropped_by.values())


# -- the child --------------------------------------------------------------------------------------------


def _frame(message: Any) -> bytes:
    """A message's bytes on the pipe: its length, its format and its ``marshal`` (``pickle`` for a value
    marshal does not take: a subclass of str from some library, a Decimal)."""
    try:
        data = _MARSHAL + marshal.dumps(message)
    except ValueError:
        data = _PICKLE + pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


def _loads(data: bytes) -> Any:
    return marshal.loads(memoryview(data)[1:]) if data[:1] == _MARSHAL else pickle.loads(data[1:])


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        data = os.read(fd, min(size, 1 << 20))
        if not data:
            return None
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)


def _read_message(fd: int) -> Any:
    head = _read_exact(fd, _FRAME.size)
    if head is None:
        return None
    body = _read_exact(fd, _FRAME.unpack(head)[0])
    return None if body is None else _loads(body)


def child_main() -> int:
    """The exporter process: settings, then batches of request traces on stdin; reports on stdout."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the worker decides when this one ends
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    logging.basicConfig(level=logging.WARNING, format="trace exporter: %(levelname)s %(message)s")
    from . import otlp
    from .trace_encoding import RequestEncoder

    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    settings = _read_message(stdin)
    if settings is None:
        return 0
    counts = {"received": 0, "done": 0, "collector": 0, "exporter_queue": 0, "flushed": 0}
    lock = threading.Lock()

    def report(wait: bool) -> None:
        """The counts so far, to the worker. Each report holds the totals, so one the pipe has no room for
        is skipped (the worker reads them at its ticks) unless the worker waits for it (a flush)."""
        with lock:
            frame = _frame(dict(counts))  # well under PIPE_BUF: written whole or not at all
        while True:
            try:
                os.write(stdout, frame)
                return
            except BlockingIOError:
                if not wait:
                    return
                select.select([], [stdout], [], 1.0)

    def sent(count: int, ok: bool) -> None:
        with lock:
            counts["done"] += count
            if not ok:
                counts["collector"] += count
        report(False)

    def take_drops() -> int:
        with lock:
            dropped = exporter.dropped - counts["exporter_queue"]
            counts["exporter_queue"] += dropped
            counts["done"] += dropped
        return dropped

    os.set_blocking(stdout, False)
    post: Any = otlp_discard
    if not settings.get("discard"):
        post = otlp.HttpSender(settings["endpoint"], settings["headers"], settings["timeout_s"])
    exporter = otlp.BatchExporter(
        RequestEncoder(settings["resource"], settings["scope"]),
        post,
        max_queue=settings["max_queue"],
        interval_s=settings["interval_s"],
        max_batch=min(settings["max_queue"], 4096),
        on_sent=sent,
    )
    while True:
        message = _read_message(stdin)
        if message is None:  # the worker closed the pipe (or died): send everything, report, exit
            exporter.shutdown(settings["timeout_s"] + 1.0)
            take_drops()
            report(True)
            return 0
        seq, flush, traces = message
        for trace in traces:
            exporter.add(trace, len(trace[1]) + 1)
        with lock:
            counts["received"] += sum(map(_spans, traces))
        dropped = take_drops()
        if flush:
            exporter.force_flush(settings["timeout_s"] + 1.0)
            with lock:
                counts["flushed"] = seq
            report(True)
        elif dropped:
            report(False)


def otlp_discard(body: bytes) -> bool:
    """The benches' post: the encoded export request, dropped."""
    return True


if __name__ == "__main__":
    raise SystemExit(child_main())
