"""Throughput and latency: the fake upstream direct vs through the gateway, driven by wrk. Prints a table.

    python bench/gateway_bench.py [--duration 15] [--workers 2]

Everything runs on 127.0.0.1; wrk, the upstream and the gateway share this machine's cores, so compare
the rows of one run with each other, not with another run's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.auth import hash_key  # noqa: E402

KEY = "gw-bench-key"
BODY = '{"model":"bench","messages":[{"role":"user","content":"hello"}]}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, data=BODY.encode(), headers={
                "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url: str, connections: int, duration: int, script: Path) -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
                          url], capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "non2xx": float(errors.group(1)) if errors else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=2, help="also measure this many gateway workers (1: skip)")
    parser.add_argument("--log-requests", action="store_true", help="keep the per-request log line on")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = \'{BODY}\'\n'
                      f'wrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.headers["Authorization"] = "Bearer {KEY}"\n')
    up_port = free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        processes.append(process)
        return process

    def gateway(workers: int) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        config = tmp / f"config-{workers}.yaml"
        config.write_text(f"""server: {{host: 127.0.0.1, port: {port}, log_requests: {str(args.log_requests).lower()}}}
models:
  - name: bench
    deployments:
      - {{provider: openai-compatible, model: bench, api_base: "http://127.0.0.1:{up_port}/v1", api_key: upstream}}
tenants:
  - {{name: bench, keys: ["{hash_key(KEY)}"], models: "*"}}
""")
        process = start([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", str(workers)])
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_ready(url)
        return process, url

    rows: list[tuple[str, int, dict[str, float]]] = []
    try:
        start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(up_port)])
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        wait_ready(direct)
        one, one_url = gateway(1)
        time.sleep(1)
        idle_rss = rss_mb(one.pid)
        for connections in (50, 1):
            rows.append(("upstream direct", connections, wrk(direct, connections, args.duration, script)))
            rows.append(("gateway, 1 worker", connections, wrk(one_url, connections, args.duration, script)))
        loaded_rss = rss_mb(one.pid)
        one.send_signal(signal.SIGTERM)
        one.wait(timeout=60)
        if args.workers > 1:
            _, many_url = gateway(args.workers)
            rows.append((f"gateway, {args.workers} workers", 50, wrk(many_url, 50, args.duration, script)))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{os.cpu_count()} cores shared by wrk, the upstream and the gateway; {args.duration} s per run; "
          f"per-request log line {'on' if args.log_requests else 'off'}\n")
    print("| target | connections | requests/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, connections, r in rows:
        print(f"| {name} | {connections} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['non2xx']:.0f} |")
    by = {(name, c): r for name, c, r in rows}
    added = by[("gateway, 1 worker", 1)]["p50"] - by[("upstream direct", 1)]["p50"]
    print(f"\nadded p50 at 1 connection: {added:.3f} ms (target < 1 ms)")
    print(f"gateway RSS: {idle_rss:.1f} MB idle, {loaded_rss:.1f} MB after load (target idle < 100 MB)")
    print(f"gateway 1 worker at 50 connections: {by[('gateway, 1 worker', 50)]['rps']:,.0f} req/s (target 3,000+)")
    if args.workers > 1:
        ratio = by[(f"gateway, {args.workers} workers", 50)]["rps"] / by[("gateway, 1 worker", 50)]["rps"]
        print(f"{args.workers} workers / 1 worker: {ratio:.2f}x (target 1.6x for 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
