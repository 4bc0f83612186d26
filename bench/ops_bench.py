"""The request log and tracing, on vs off: gateway req/s at 50 connections and p50, through wrk.

Targets (issue 21): req/s with them on >= 90% of off, p50 added <= 0.1 ms. At 50 connections one worker is
saturated and its p50 is mostly the time a request waits behind the others; the cost one request pays is
read at 1 connection (the last two columns), where each request runs alone. Rows, each a `python -m gateway
serve` (1 worker) in front of the same fake upstream: off (request log and tracing off; the log line on in
all rows), request log on (SQLite in a temp dir), tracing on (every request sampled, exported over OTLP/HTTP
to a local sink), tracing with 10% of requests sampled, both. Rounds interleave the rows so each meets the same
background load; medians shown. "capacity vs off": the off row's server CPU per request over the row's (the
req/s it would reach with a core of its own), the figure to read when other work takes the cores. "loop /
other threads": the server's CPU per request split between its main thread (the event loop) and the rest
(the request log's writer; the trace exporter process, a child whose CPU the server's includes), from /proc.

    python bench/ops_bench.py [--duration 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb

SINK = """
from aiohttp import web
async def traces(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")
app = web.Application()
app.router.add_post("/v1/traces", traces)
web.run_app(app, host="127.0.0.1", port={port}, print=None)
"""
# row -> (request log, share of requests traced: 0 for tracing off)
ROWS = {
    "off": (False, 0.0),
    "request log on": (True, 0.0),
    "tracing on": (False, 1.0),
    "tracing 10% sampled": (False, 0.1),
    "both on": (True, 1.0),
}


def config(tmp: Path, slug: str, up_port: int, sink_port: int, request_log: bool, tracing: float) -> Path:
    path = gb.gateway_config(tmp, slug, up_port, True)
    path.write_text(
        path.read_text()
        + f"""request_log:
  enabled: {str(request_log).lower()}
  path: {tmp / f"{slug}.db"}
tracing:
  enabled: {str(tracing > 0).lower()}
  sample_ratio: {tracing or 1.0}
  endpoint: http://127.0.0.1:{sink_port}/v1/traces
"""
    )
    return path


def cpu_per_request(result: gb.Result) -> float:
    """The server's CPU µs per request: what bounds req/s once it has a core, and moves less with other
    load than req/s does on a shared machine."""
    return result.cpu.get("server", 0.0) / 100 / result.rps * 1e6


def start_fakes(procs: gb.Processes, tmp: Path) -> tuple[int, int]:
    """The fake upstream and the traces sink, answering; their ports."""
    up_port, sink_port = gb.free_port(), gb.free_port()
    upstream = procs.start(gb.fake_upstream(up_port), tmp / "upstream.log")
    gb.wait_ready(
        f"http://127.0.0.1:{up_port}/v1/chat/completions",
        upstream,
        tmp / "upstream.log",
        key="upstream-key",
        body=gb.BODY,
    )
    procs.start([sys.executable, "-c", SINK.format(port=sink_port)], tmp / "sink.log")
    return up_port, sink_port


def thread_seconds(pid: int) -> float:
    """CPU seconds of the process's main thread: its event loop."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The server's child processes (the trace exporter): their CPU is the server's too."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ops-bench-"))
    lua = gb.lua_script(tmp / "gateway.lua", gb.KEY)
    procs = gb.Processes()
    results: dict[str, list[gb.Result]] = {}
    singles: dict[str, list[gb.Result]] = {}
    loops: dict[str, list[tuple[float, float]]] = {}  # (loop, other threads) µs per request
    try:
        up_port, sink_port = start_fakes(procs, tmp)
        servers = {}
        for name, (request_log, tracing) in ROWS.items():
            slug = name.replace(" ", "-")
            port = gb.free_port()
            log = tmp / f"{slug}.log"
            process = procs.start(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(config(tmp, slug, up_port, sink_port, request_log, tracing)),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                log,
            )
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            gb.wait_ready(url, process, log, key=gb.KEY, body=gb.BODY)
            servers[name] = (process, url, [process.pid, *children(process.pid)])
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for name, (process, url, pids) in servers.items():
                before = thread_seconds(process.pid), gb.cpu_seconds(pids)
                result = gb.wrk(name, url, lua, 50, args.duration, {"server": pids})
                results.setdefault(name, []).append(result)
                served = result.rps * args.duration
                loop = (thread_seconds(process.pid) - before[0]) / served * 1e6
                total = (gb.cpu_seconds(pids) - before[1]) / served * 1e6
                loops.setdefault(name, []).append((loop, total - loop))
                # one connection: each request alone in the worker, so its p50 is its own cost, not a queue's
                alone = gb.wrk(name, url, lua, 1, max(3, args.duration // 2))
                singles.setdefault(name, []).append(alone)
    finally:
        procs.stop_all()
    off = results["off"]
    print(
        "\n| row (1 worker, 50 connections) | req/s | vs off (paired) | server CPU µs/req | loop / other threads "
        "| capacity vs off | p50 ms | p50 added ms | p99 ms | 1 connection: p50 ms | p50 added ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        rps = statistics.median(r.rps for r in runs)
        ratio = statistics.median(r.rps / o.rps for r, o in zip(runs, off, strict=True))
        p50 = statistics.median(r.p50 for r in runs)
        added = statistics.median(r.p50 - o.p50 for r, o in zip(runs, off, strict=True))
        p99 = statistics.median(r.p99 for r in runs)
        cpu = statistics.median(cpu_per_request(r) for r in runs)
        loop = statistics.median(x[0] for x in loops[name])
        other = statistics.median(x[1] for x in loops[name])
        capacity = statistics.median(
            cpu_per_request(o) / cpu_per_request(r) for r, o in zip(runs, off, strict=True)
        )
        alone = singles[name]
        alone_p50 = statistics.median(r.p50 for r in alone)
        alone_added = statistics.median(r.p50 - o.p50 for r, o in zip(alone, singles["off"], strict=True))
        print(
            f"| {name} | {rps:,.0f} | {ratio:.1%} | {cpu:,.0f} | {loop:,.0f} / {other:,.0f} | {capacity:.1%} "
            f"| {p50:.2f} | {added:+.3f} "
            f"| {p99:.2f} | {alone_p50:.3f} | {alone_added:+.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
