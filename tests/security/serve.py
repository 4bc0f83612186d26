"""``python -m gateway serve`` in a subprocess (the real listener: TLS, limits, private listeners)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from gateway.auth import hash_key, new_key
from tests.harness import free_port, reap, serve_argv

ADMIN_KEY = new_key()
ADMIN = f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
"""

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serving(
    tmp_path: Path,
    config: str,
    *,
    scheme: str = "http",
    verify: Any = True,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, Path]]:
    """Yields (url, stdout log path) once /healthz answers; stops the gateway with SIGTERM afterwards."""
    path = tmp_path / "config.yaml"
    path.write_text(config)
    stdout = tmp_path / "stdout.log"
    port = free_port()
    with stdout.open("wb") as log:
        process = subprocess.Popen(
            serve_argv(str(path), str(port)),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, stdout.read_text()[-3000:]
            assert time.monotonic() < deadline, "gateway did not start: " + stdout.read_text()[-3000:]
            time.sleep(0.1)
        yield url, stdout
    finally:
        process.send_signal(signal.SIGTERM)
        reap(process)


def error_of(raised: Any) -> dict[str, Any]:
    """The OpenAI error object an SDK exception carries (its ``body``, typed ``object`` by the SDK)."""
    body = raised.value.body
    assert isinstance(body, dict), body
    return body


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def poll(condition: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
