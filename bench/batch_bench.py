"""Batches: lines per second through the gateway's batch runner with a fake upstream that answers at once, and
the gateway's memory while a large file uploads (streamed to disk, never whole in memory).

The fake upstreams run in one process, the gateway (one worker, state in memory) in another; this process
uploads, creates the batch, polls it to the end and samples the gateway's RSS from /proc while uploading.

    .venv/bin/python bench/batch_bench.py [--lines 5000] [--concurrency 16] [--upload-mb 200]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, cast

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.providers_bench import KEY, config  # noqa: E402
from tests.harness import free_port  # noqa: E402

DEADLINE_S = 600


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Filler:
    """A file-like object of ``size`` bytes of JSONL, made as it is read (the client holds none of it)."""

    LINE = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return (self.LINE * (n // len(self.LINE) + 1))[:n]


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit("the gateway exited")
        time.sleep(0.1)
    raise SystemExit("the gateway did not become ready")


def run_batch(client: httpx.Client, lines: int) -> tuple[float, dict[str, int]]:
    body = b"".join(
        b'{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "openai", '
        b'"messages": [{"role": "user", "content": "line %d"}], "max_tokens": 16}}\n' % (i, i)
        for i in range(lines)
    )
    file_id = client.post("/v1/files", files={"file": ("in.jsonl", body)}, data={"purpose": "batch"}).json()[
        "id"
    ]
    started = time.perf_counter()
    batch = client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ).json()
    deadline = time.monotonic() + DEADLINE_S
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        if time.monotonic() > deadline:
            raise SystemExit(f"batch not done in {DEADLINE_S} s: {batch['request_counts']}")
        time.sleep(0.05)
        batch = client.get(f"/v1/batches/{batch['id']}").json()
    return time.perf_counter() - started, batch["request_counts"]


def upload_memory(client: httpx.Client, pid: int, megabytes: int) -> tuple[float, float, float, float]:
    before = rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        answer = client.post(
            "/v1/files",
            files={"file": ("big.jsonl", cast(IO[bytes], Filler(megabytes << 20)))},
            data={"purpose": "batch"},
            timeout=DEADLINE_S,
        )
    finally:
        done.set()
        sampler.join()
    assert answer.status_code == 200, answer.text
    assert answer.json()["bytes"] == megabytes << 20, answer.json()
    return before, peak[0], rss_mb(pid), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upload-mb", type=int, default=200)
    args = parser.parse_args()
    ports = [free_port() for _ in range(4)]
    fakes = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from bench.providers_bench import serve_fakes; import sys; serve_fakes({ports})",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert fakes.stdout is not None and fakes.stdout.readline().strip() == b"ready"
    with tempfile.TemporaryDirectory() as tmp:
        gateway_port = free_port()
        path = Path(tmp) / "config.yaml"
        path.write_text(
            config(ports, gateway_port) + f"files:\n  dir: {tmp}/files\n  max_bytes: "
            f"{(args.upload_mb + 1) << 20}\nbatches:\n  poll_s: 0.05\n  concurrency: {args.concurrency}\n"
        )
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{gateway_port}"
        try:
            wait_ready(url, gateway)
            with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
                seconds, counts = run_batch(client, args.lines)
                before, peak, after, upload_s = upload_memory(client, gateway.pid, args.upload_mb)
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)
            fakes.send_signal(signal.SIGTERM)
            fakes.wait(timeout=10)
    print("| batch lines | concurrency | seconds | lines/s | completed | failed |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.lines} | {args.concurrency} | {seconds:.2f} | {args.lines / seconds:.0f} | "
        f"{counts['completed']} | {counts['failed']} |"
    )
    print()
    print("| upload MB | seconds | gateway RSS before MB | peak MB | after MB |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {args.upload_mb} | {upload_s:.1f} | {before:.0f} | {peak:.0f} | {after:.0f} |")


if __name__ == "__main__":
    main()
