"""The engine's counters are read by the server's event loop while the step thread writes them."""

from __future__ import annotations

import sys
import threading
import time

from local_engine.metrics import EngineMetrics


def test_a_snapshot_read_while_the_step_thread_records_never_fails() -> None:
    metrics = EngineMetrics()
    for i in range(1024):  # a full window, so each read walks every sample
        metrics.record_step(time.perf_counter(), 1 + i % 3)
    stop = threading.Event()

    def step_thread() -> None:
        while not stop.is_set():
            metrics.record_step(time.perf_counter(), 2)
            metrics.record_ttft(0.01)
            metrics.record_itl(0.001)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as it can: a read meets many appends
    writer = threading.Thread(target=step_thread)
    writer.start()
    try:
        for _ in range(300):
            snapshot = metrics.snapshot()
            assert snapshot["tokens_per_s"] is not None and snapshot["tokens_per_s"] > 0
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(interval)
