"""The processes a provider bench drives: the fake upstreams (``providers_bench.py --fakes``, one process)
and one gateway worker (``python -m gateway serve``), started together, waited for, and stopped."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "bench" / "providers_bench.py"


@contextmanager
def provider_gateway(
    config: Callable[[list[int], int], str],
    prefix: str,
    *,
    ready: tuple[str, dict[str, Any]],
    headers: dict[str, str],
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Starts the four fakes and a gateway on ``config(fake ports, gateway port)``; yields the gateway's URL
    and process once ``ready`` (a path and body) is answered; stops both after."""
    from tests.fakes import bedrock_upstream
    from tests.harness import free_port

    ports = [free_port() for _ in range(4)]
    gateway_port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    (tmp / "config.yaml").write_text(config(ports, gateway_port))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": bedrock_upstream.ACCESS_KEY,
        "PYTHONPATH": str(ROOT),
        "AWS_SECRET_ACCESS_KEY": bedrock_upstream.SECRET_KEY,
        "AWS_REGION": bedrock_upstream.REGION,
    }
    fakes = subprocess.Popen(
        [sys.executable, str(FAKES), "--fakes", *map(str, ports)], stdout=subprocess.PIPE, env=env
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp / "config.yaml")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert fakes.stdout is not None and fakes.stdout.readline().strip() == b"ready"
        url = f"http://127.0.0.1:{gateway_port}"
        _wait_answering(url, *ready, headers)
        yield url, gateway
    finally:
        for process in (gateway, fakes):
            process.terminate()
            process.wait(timeout=15)


def _wait_answering(url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    async def once() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + path, json=body, headers=headers) as r,
        ):
            await r.read()

    for _ in range(100):
        try:
            asyncio.run(once())
            return
        except aiohttp.ClientError:
            time.sleep(0.1)
    raise SystemExit(f"the gateway at {url} did not answer")
