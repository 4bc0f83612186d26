"""``python -m gateway serve`` in a subprocess on a loopback port, for tests that need exactly what a real
gateway process exports (its /metrics) or does across processes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.harness import free_port, reap, serve_argv

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    def __init__(
        self, config: Path, log: Path, *, workers: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                serve_argv(str(config), str(self.port), workers=str(workers)),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def wait_ready(self, timeout_s: float = 180) -> GatewayProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"gateway not ready in {timeout_s} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            reap(self.process)


def poll(condition, what: str, timeout_s: float = 20):
    """``condition()``'s first true value, checked every 20 ms until the deadline."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    return value
