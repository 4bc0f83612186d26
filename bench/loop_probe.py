"""Where a gateway worker's CPU goes per request, by thread and to the cyclic GC: the measurements behind
docs/operations.md's "Where the event loop's extra CPU went" (issue 21).

Rows as bench/ops_bench.py's (off, request log, tracing every request, tracing 10%, both), each a
`python -m gateway serve` (1 worker) in front of the same fake upstream, run through this script (``--wrapped``)
so that GC callbacks time every collection and SIGUSR1 reports them. Per row, interleaved rounds of wrk at 50
connections; medians of: req/s, the event loop's thread CPU µs per request and the other threads' (from
/proc/PID/task), the trace exporter process's (its child), the loop's voluntary context switches per 1,000 requests (each a wait: for the GIL while
another thread holds it, among others), the GC's µs per request by generation and collections per 1,000
requests.

``--callgrind``: instead, each row once under valgrind's callgrind (instrumented only once warm, ~30x
slower), and instructions per request by thread and inside ``gc_collect_main``: counts that do not move
with the machine's other load, unlike any time on a shared machine. Needs valgrind.

    python bench/loop_probe.py [--rows off,log,on,sampled,both] [--duration 8] [--rounds 4] [--tree DIR]
                               [--callgrind]

``--tree`` runs another checkout's gateway (say, ``git worktree`` or ``git archive`` of an older commit) for
the rows named ``NAME@tree``: ``--rows off,on,off@tree,on@tree`` compares the two, interleaved.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def wrapped() -> None:
    """Runs ``python -m gateway`` (the rest of argv) with GC callbacks; SIGUSR1 writes the seconds spent in
    collections and their count, per generation, to $LOOP_PROBE_OUT."""
    import runpy

    seconds, collections = [0.0, 0.0, 0.0], [0, 0, 0]
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            seconds[info["generation"]] += time.thread_time() - started[0]
            collections[info["generation"]] += 1

    gc.callbacks.append(timed)

    def report(*_: Any) -> None:
        out = os.environ["LOOP_PROBE_OUT"]
        Path(out + ".tmp").write_text(json.dumps({"seconds": seconds, "collections": collections}))
        os.replace(out + ".tmp", out)

    signal.signal(signal.SIGUSR1, report)
    sys.argv = ["gateway", *sys.argv[2:]]
    runpy.run_module("gateway", run_name="__main__", alter_sys=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--wrapped"]:
    wrapped()  # before importing gateway_bench, which puts this checkout first on sys.path
    raise SystemExit(0)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb  # noqa: E402
from ops_bench import config as row_config  # noqa: E402
from ops_bench import start_fakes  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
# row -> (request log, share of requests traced), as bench/ops_bench.py's rows
ROWS = {
    "off": (False, 0.0),
    "log": (True, 0.0),
    "on": (False, 1.0),
    "sampled": (False, 0.1),
    "both": (True, 1.0),
}


def thread_seconds(pid: int) -> dict[int, float]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def children_seconds(pid: int) -> float:
    """CPU seconds of the process's children so far (the trace exporter process), over their life."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return gb.cpu_seconds([int(child) for child in children])


def switches(pid: int) -> int:
    """The main thread's voluntary context switches so far: each wait for the GIL (or for the kernel) is one."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    return int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def gc_report(pid: int, out: Path) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    for _ in range(3000):
        if out.exists():
            return dict(json.loads(out.read_text()))
        time.sleep(0.02)
    raise RuntimeError(f"no GC report from {pid}")


def requests_served(output: str) -> int:
    found = re.search(r"(\d+) requests in", output)
    if found is None:
        raise RuntimeError(f"wrk said:\n{output}")
    return int(found.group(1))


def instructions(path: Path) -> tuple[int, int]:
    """A callgrind dump's instructions in all, and inside gc_collect_main (outermost calls)."""
    total = int(re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.MULTILINE).group(1))  # type: ignore[union-attr]
    listing = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    collected = 0
    for line in listing.splitlines():
        found = re.match(r"^\s*([\d,]+)\s+(?:\([\d. %]+\)\s+)?\S*:gc_collect_main \[", line)
        if found:
            collected = max(collected, int(found.group(1).replace(",", "")))
    return total, collected


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="off,on", help=f"of {', '.join(ROWS)}; NAME@tree: --tree's")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tree", type=Path, help="another checkout, for the rows named NAME@tree")
    parser.add_argument("--callgrind", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loop-probe-"))
    lua = gb.lua_script(tmp / "gateway.lua", gb.KEY)
    procs = gb.Processes()
    servers: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        up_port, sink_port = start_fakes(procs, tmp)
        for row in args.rows.split(","):
            name, _, where = row.partition("@")
            request_log, tracing = ROWS[name]
            config = row_config(tmp, row.replace("@", "-"), up_port, sink_port, request_log, tracing)
            if args.callgrind:  # batches fill before the interval: as at full speed
                config.write_text(config.read_text() + "  export_interval_s: 3600\n")
            root = args.tree if where else gb.ROOT
            port = gb.free_port()
            out = tmp / f"{row}.gc.json"
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--wrapped",
                "serve",
                "--config",
                str(config),
            ]
            command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            if args.callgrind:
                command = [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    "--separate-threads=yes",
                    f"--callgrind-out-file={tmp / row}.cg",
                    *command,
                ]
            process = procs.start(
                command, tmp / f"{row}.log", env={"PYTHONPATH": str(root), "LOOP_PROBE_OUT": str(out)}
            )
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            gb.wait_ready(url, process, tmp / f"{row}.log", key=gb.KEY, body=gb.BODY, timeout=600)
            servers[row] = (process, url, out)
            if args.callgrind:  # one row at a time: valgrind takes a core
                rows[row] = [callgrind_row(process, url, lua, out, args.duration * 10)]
                gb.Processes.stop(process)
        for _ in range(0 if args.callgrind else args.rounds):
            for row, (process, url, out) in servers.items():
                rows.setdefault(row, []).append(timed_row(process, url, lua, out, args.duration))
    finally:
        procs.stop_all()
    print(
        f"\n`uptime` at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
    )
    if args.callgrind:
        print("\n| row | requests | loop instructions/request | of which GC | other threads |")
        print("|---|---|---|---|---|")
        for row, (found,) in rows.items():
            print(
                f"| {row} | {found['requests']:,} | {found['loop']:,.0f} | {found['gc']:,.0f} "
                f"| {found['other']:,.0f} |"
            )
        return 0
    first = next(iter(rows.values()))
    print(
        "\n| row (1 worker, 50 connections) | req/s | vs first (paired) | loop µs/req | other threads µs/req "
        "| exporter process µs/req | loop waits per 1k requests | GC µs/req (gen 0/1/2) "
        "| collections per 1k requests |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row, runs in rows.items():

        def median(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        ratio = statistics.median(r["rps"] / f["rps"] for r, f in zip(runs, first, strict=True))
        gcs = "/".join(f"{statistics.median(r['gc'][g] for r in runs):.1f}" for g in range(3))
        counts = "/".join(f"{statistics.median(r['collections'][g] for r in runs):.2f}" for g in range(3))
        print(
            f"| {row} | {median('rps'):,.0f} | {ratio:.1%} | {median('loop'):,.0f} | {median('other'):,.0f} "
            f"| {median('children'):,.0f} | {median('waits'):,.0f} | {gcs} | {counts} |"
        )
    return 0


def timed_row(
    process: subprocess.Popen[bytes], url: str, lua: Path, out: Path, duration: int
) -> dict[str, Any]:
    before, threads = gc_report(process.pid, out), thread_seconds(process.pid)
    waits, children = switches(process.pid), children_seconds(process.pid)
    done = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{duration}s", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    )
    after, threads_after = gc_report(process.pid, out), thread_seconds(process.pid)
    waits = switches(process.pid) - waits
    children = children_seconds(process.pid) - children
    served = requests_served(done.stdout)
    loop = threads_after.get(process.pid, 0.0) - threads.get(process.pid, 0.0)
    other = sum(v - threads.get(t, 0.0) for t, v in threads_after.items() if t != process.pid)
    return {
        "rps": served / duration,
        "loop": loop / served * 1e6,
        "other": other / served * 1e6,
        "waits": waits / served * 1000,
        "children": children / served * 1e6,
        "gc": [(after["seconds"][g] - before["seconds"][g]) / served * 1e6 for g in range(3)],
        "collections": [
            (after["collections"][g] - before["collections"][g]) / served * 1000 for g in range(3)
        ],
    }


def callgrind_row(
    process: subprocess.Popen[bytes], url: str, lua: Path, out: Path, seconds: int
) -> dict[str, Any]:
    wrk = ["wrk", "-t1", "-c50", "--timeout", "60s", "-s", str(lua), url]
    subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True)
    subprocess.run([*wrk[:3], "-d20s", *wrk[3:]], capture_output=True, check=True)  # warm, instrumented
    subprocess.run(["callgrind_control", "-z", str(process.pid)], check=True, capture_output=True)
    done = subprocess.run([*wrk[:3], f"-d{seconds}s", *wrk[3:]], capture_output=True, text=True, check=True)
    subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True, capture_output=True)
    served = requests_served(done.stdout)
    dumps = sorted(out.parent.glob(f"{out.name.removesuffix('.gc.json')}.cg.1-*"))
    loop, collected = instructions(dumps[0])  # thread 1: the main thread
    other = sum(instructions(d)[0] for d in dumps[1:])
    return {"requests": served, "loop": loop / served, "gc": collected / served, "other": other / served}


if __name__ == "__main__":
    raise SystemExit(main())
