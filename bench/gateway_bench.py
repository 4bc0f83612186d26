"""Throughput, latency and memory of the gateway: the fake upstream direct vs through the gateway (and,
with ``--peer litellm``, through LiteLLM's proxy), driven by wrk. Prints one markdown table and a verdict
line per target.

    python bench/gateway_bench.py                     # direct vs gateway (1 and 2 workers), logs on and off
    python bench/gateway_bench.py --peer litellm      # and LiteLLM's proxy, 1 worker, on the same table
    python bench/gateway_bench.py --clients           # also aiohttp vs httpx as the upstream client
    python bench/gateway_bench.py --profile           # also py-spy on the gateway worker under load
    python bench/gateway_bench.py --baseline          # also a minimal aiohttp proxy: the floor under the gateway
    python bench/gateway_bench.py --rounds 3          # every row 3 times, interleaved; medians
    python bench/gateway_bench.py --stream            # the same with "stream": true (SSE relayed through the tap)

Everything runs on 127.0.0.1 and is stopped at the end. wrk, the upstream and the server under test share
this machine's cores, so compare the rows of one run with each other, not with another run's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.auth import hash_key  # noqa: E402

KEY = "gw-bench-key"
LITELLM_KEY = "sk-bench-master-key"
BODY = '{"model":"bench","messages":[{"role":"user","content":"hello"}]}'
STREAM_BODY = '{"model":"bench","stream":true,"messages":[{"role":"user","content":"hello"}]}'
GATEWAY_ROW = "gateway, 1 worker, logs on"
TARGETS = {"rps": 3000.0, "peer_ratio": 20.0, "added_p50_ms": 1.0, "idle_rss_mb": 100.0, "workers_ratio": 1.6}


@dataclass
class Result:
    name: str
    connections: int
    rps: float
    p50: float
    p99: float
    non2xx: int = 0
    socket_errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # percent of one core, by process group


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    lua: Path
    log: Path
    idle_rss: float = float("nan")
    loaded_rss: float = float("nan")
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fake_upstream(port: int) -> list[str]:
    """The command of the fake OpenAI upstream (tests/fakes/openai_upstream.py) on a loopback ``port``."""
    return [sys.executable, "-m", "tests.fakes.openai_upstream", "--host", "127.0.0.1", "--port", str(port)]


def http(url: str, key: str | None = None, body: str | None = None, timeout: float = 2) -> int:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body.encode() if body else None, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        return int(response.status)


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    *,
    key: str | None = None,
    body: str | None = None,
    timeout: float = 60,
) -> float:
    """Poll until ``url`` answers 200; returns the seconds it took. Fails early if the process exits."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before it was ready:\n" + tail(log)
            )
        try:
            if http(url, key, body) == 200:
                return time.monotonic() - started
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s:\n" + tail(log))


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def worker_pids(server: Server) -> list[int]:
    """The processes that serve requests: the process itself, or its worker children if it has any."""
    kids = children(server.process.pid)
    return kids or [server.process.pid]


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, sum(fields[:8])


def cpu_busy(seconds: float = 1.0) -> float:
    """Percent of all cores busy over ``seconds`` (before we start anything: other jobs' load)."""
    read = machine_ticks
    busy0, total0 = read()
    time.sleep(seconds)
    busy1, total1 = read()
    return 100.0 * (busy1 - busy0) / max(1, total1 - total0)


def lua_script(path: Path, key: str) -> Path:
    path.write_text(
        f"wrk.method = \"POST\"\nwrk.body = '{BODY}'\n"
        f'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def wrk(
    name: str, url: str, lua: Path, connections: int, duration: int, watch: dict[str, list[int]] | None = None
) -> Result:
    """One wrk run; ``watch`` names process groups whose CPU use during the run is reported."""
    threads = 1 if connections == 1 else 2
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(lua), url]
    watch = watch or {}
    before = {label: cpu_seconds(pids) for label, pids in watch.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_before = machine_ticks()[0]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    elapsed = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {label: 100 * (cpu_seconds(pids) - before[label]) / elapsed for label, pids in watch.items()}
    cpu["wrk"] = (
        100
        * (
            children_after.ru_utime
            + children_after.ru_stime
            - children_before.ru_utime
            - children_before.ru_stime
        )
        / elapsed
    )
    machine = 100 * (machine_ticks()[0] - machine_before) / os.sysconf("SC_CLK_TCK") / elapsed
    cpu["other"] = max(
        0.0, machine - sum(cpu.values())
    )  # everything else on the machine, other jobs included
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if done.returncode != 0 or rps is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{out}\n{done.stderr}")

    def pct(p: str) -> float:
        match = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
        return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result = Result(
        name,
        connections,
        float(rps.group(1)),
        pct("50"),
        pct("99"),
        int(non2xx.group(1)) if non2xx else 0,
        sum(map(int, sock.groups())) if sock else 0,
        cpu,
    )
    print(
        f"  {name:<34} c={connections:<3} {result.rps:>9,.0f} req/s  p50 {result.p50:7.2f} ms  "
        f"p99 {result.p99:7.2f} ms  non-2xx {result.non2xx}  socket errors {result.socket_errors}  CPU % "
        + " ".join(f"{label} {value:.0f}" for label, value in cpu.items()),
        flush=True,
    )
    return result


# ---------------------------------------------------------------- processes


class Processes:
    """Everything started here, each in its own session so that its whole group can be stopped."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.started.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:  # the group: workers, uvicorn children, whatever outlived the leader
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


def gateway_config(tmp: Path, name: str, up_port: int, log_requests: bool) -> Path:
    config = tmp / f"gateway-{name}.yaml"
    config.write_text(f"""server: {{host: 127.0.0.1, port: 8081, log_requests: {str(log_requests).lower()}}}
models:
  - name: bench
    deployments:
      - {{provider: openai-compatible, model: bench, api_base: "http://127.0.0.1:{up_port}/v1", api_key: upstream-key}}
tenants:
  - name: bench
    keys: ["{hash_key(KEY)}"]
    models: "*"
""")
    return config


def start_gateway(procs: Processes, tmp: Path, up_port: int, workers: int, log_requests: bool) -> Server:
    name = f"gateway, {workers} worker{'s' if workers > 1 else ''}, logs {'on' if log_requests else 'off'}"
    slug = f"{workers}w-{'logs' if log_requests else 'nologs'}"
    config = gateway_config(tmp, slug, up_port, log_requests)
    port = free_port()
    log = tmp / f"gateway-{slug}.log"
    process = procs.start(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        log,
    )
    base = f"http://127.0.0.1:{port}"
    server = Server(name, process, f"{base}/v1/chat/completions", tmp / "gateway.lua", log)
    ready = wait_ready(f"{base}/healthz", process, log)
    if workers > 1:  # /healthz answered by one worker; wait until all of them exist
        deadline = time.monotonic() + 30
        while len(children(process.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
    wait_ready(server.url, process, log, key=KEY, body=BODY)
    server.notes.append(f"ready in {ready:.1f} s")
    time.sleep(1)
    server.idle_rss = sum(rss_mb(pid) for pid in worker_pids(server))
    return server


def litellm_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists():
        print(f"creating {venv} and installing litellm[proxy] into it (a few minutes) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "litellm[proxy]"], check=True)
    # As Python 3.13's venv does: keep git (and ruff, which follows .gitignore) out of it.
    ignore = venv / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return python


def start_litellm(procs: Processes, tmp: Path, up_port: int, venv: Path) -> Server:
    python = litellm_python(venv)
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    config = tmp / "litellm.yaml"
    config.write_text(f"""model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:{up_port}/v1
      api_key: upstream-key
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
""")
    port = free_port()
    log = tmp / "litellm.log"
    env = {
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    process = procs.start(
        [
            str(venv / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        log,
        env,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    server = Server(
        f"LiteLLM {version}, 1 worker", process, url, lua_script(tmp / "litellm.lua", LITELLM_KEY), log
    )
    ready = wait_ready(url, process, log, key=LITELLM_KEY, body=BODY, timeout=180)
    server.notes.append(f"ready in {ready:.1f} s")
    time.sleep(1)
    server.idle_rss = sum(rss_mb(pid) for pid in [process.pid, *children(process.pid)])
    return server


# ---------------------------------------------------------------- baseline


def minimal_proxy(port: int, upstream: str) -> None:
    """The least an aiohttp proxy can do: read the body, POST it upstream on a pooled ClientSession, return
    the answer. No auth, validation, routing, metrics or log line: the floor under the gateway's figures."""
    import aiohttp
    import uvloop
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        session: aiohttp.ClientSession = request.app["session"]
        async with session.post(
            upstream, data=body, headers={"content-type": "application/json"}
        ) as response:
            return web.Response(
                body=await response.read(), status=response.status, content_type="application/json"
            )

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        yield
        await app["session"].close()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    app.cleanup_ctx.append(session_ctx)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def start_minimal_proxy(procs: Processes, tmp: Path, up_port: int) -> Server:
    port = free_port()
    log = tmp / "minimal.log"
    process = procs.start(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--minimal-proxy",
            str(port),
            f"http://127.0.0.1:{up_port}/v1/chat/completions",
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    server = Server("minimal aiohttp proxy (floor)", process, url, tmp / "gateway.lua", log)
    wait_ready(url, process, log, key=KEY, body=BODY)
    time.sleep(1)
    server.idle_rss = rss_mb(process.pid)
    return server


# ---------------------------------------------------------------- profile


def profile(server: Server, duration: int, tmp: Path, top: int = 15) -> list[str]:
    """py-spy on the (first) worker while wrk drives 50 connections; returns the report's lines."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return ["py-spy is missing: pip install py-spy (into this venv)"]
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    raw = results / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    pid = worker_pids(server)[0]
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(duration),
            "-r",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wrk(server.name + " (under py-spy)", server.url, server.lua, 50, duration)
        _, err = spy.communicate(timeout=duration + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait(timeout=10)
    if not raw.exists():
        return [f"py-spy failed: {err.decode(errors='replace').strip()[-500:]}"]
    self_samples: collections.Counter[str] = collections.Counter()
    total_samples: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short_frame(f) for f in stack.split(";")]
        self_samples[frames[-1]] += n
        for frame in set(frames):
            total_samples[frame] += n
    if not samples:
        return ["py-spy recorded no samples"]
    lines = [
        f"py-spy, {samples} samples of busy Python stacks in worker pid {pid} at 50 connections "
        f"({duration} s; raw stacks in {raw.relative_to(ROOT)}):",
        "",
        "| self % | total % | function (file:line) |",
        "|---:|---:|---|",
    ]
    for frame, n in self_samples.most_common(top):
        lines.append(f"| {100 * n / samples:.1f} | {100 * total_samples[frame] / samples:.1f} | `{frame}` |")
    lines += ["", "| total % | function (inclusive, top) |", "|---:|---|"]
    for frame, n in total_samples.most_common(top + 10):
        lines.append(f"| {100 * n / samples:.1f} | `{frame}` |")
    return lines


def _short_frame(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:123)"
    match = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not match:
        return frame
    name, path, _line = match.groups()
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        try:
            path = str(Path(path).resolve().relative_to(ROOT))
        except ValueError:
            pass
    return f"{name} ({path})"


# ---------------------------------------------------------------- upstream clients


async def _drive(send: object, concurrency: int, duration: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def one() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await send()  # type: ignore[operator]
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return len(latencies), latencies


async def _client_run(kind: str, url: str, concurrency: int, duration: float) -> dict[str, float]:
    body = BODY.encode()
    headers = {"content-type": "application/json", "authorization": "Bearer upstream-key"}
    if kind == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:

            async def send() -> None:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status

            await _drive(send, concurrency, 1.0)  # warm-up: open the connections
            started = time.perf_counter()
            count, latencies = await _drive(send, concurrency, duration)
    else:
        import httpx

        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def send() -> None:
                response = await client.post(url, content=body, headers=headers)
                assert response.status_code == 200, response.status_code

            await _drive(send, concurrency, 1.0)
            started = time.perf_counter()
            count, latencies = await _drive(send, concurrency, duration)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": count / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def client_table(url: str, duration: int, concurrency: int = 50) -> list[str]:
    import uvloop

    versions = {}
    for kind in ("aiohttp", "httpx"):
        module = __import__(kind)
        versions[kind] = getattr(module, "__version__", "?")
    lines = [
        f"Upstream clients, {concurrency} concurrent requests in one uvloop process, {duration} s each, "
        "against the fake upstream:",
        "",
        "| client | requests/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for kind in ("aiohttp", "httpx"):
        r = uvloop.run(_client_run(kind, url, concurrency, duration))
        label = "aiohttp.ClientSession" if kind == "aiohttp" else "httpx.AsyncClient"
        print(
            f"  {label:<24} {r['rps']:>9,.0f} req/s  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms",
            flush=True,
        )
        lines.append(f"| {label} {versions[kind]} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} |")
    return lines


# ---------------------------------------------------------------- main


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run (default 15)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every row this many times, round-robin, and report the median (default 1)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="also measure this many gateway workers (1: skip)"
    )
    parser.add_argument("--peer", choices=["litellm"], help="also measure LiteLLM's proxy (1 worker)")
    parser.add_argument(
        "--litellm-venv",
        type=Path,
        default=ROOT / "bench" / ".venv-litellm",
        help="LiteLLM's own virtualenv, created if missing (default bench/.venv-litellm)",
    )
    parser.add_argument(
        "--clients", action="store_true", help="also measure aiohttp vs httpx as upstream client"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the gateway worker with py-spy (raw stacks kept in bench/results/)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also measure a minimal aiohttp pass-through proxy: the floor under the gateway",
    )
    parser.add_argument(
        "--no-logs-off", action="store_true", help="skip the runs with the request log line off"
    )
    parser.add_argument(
        "--stream", action="store_true", help="request streams (SSE) instead of whole answers"
    )
    parser.add_argument("--minimal-proxy", nargs=2, metavar=("PORT", "UPSTREAM_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream:
        global BODY
        BODY = STREAM_BODY
    if args.minimal_proxy:
        minimal_proxy(int(args.minimal_proxy[0]), args.minimal_proxy[1])
        return 0
    if not shutil.which("wrk"):
        print(
            "wrk is missing: install it (Debian: apt-get update && apt-get install -y wrk)", file=sys.stderr
        )
        return 2

    cores = os.cpu_count()
    background = [cpu_busy(2.0)]
    print(
        f"{cores} cores, shared by wrk, the upstream and the servers under test; {args.duration} s per wrk run, "
        f"{args.rounds} round(s); {background[0]:.0f}% of the cores busy with other work before start",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    lua_script(tmp / "gateway.lua", KEY)
    direct_lua = lua_script(tmp / "direct.lua", "upstream-key")
    procs = Processes()
    runs: dict[tuple[str, int], list[Result]] = {}
    servers: dict[str, Server] = {}
    extra: list[str] = []
    try:
        up_port = free_port()
        up_log = tmp / "upstream.log"
        upstream = procs.start(fake_upstream(up_port), up_log)
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        wait_ready(direct, upstream, up_log, key="upstream-key", body=BODY)

        # Every server is started (and its idle RSS read) before any load; idle ones take no CPU while
        # another is measured, so the rounds interleave them under the same background load.
        plan: list[tuple[Server | None, tuple[int, ...]]] = [(None, (50, 1))]
        plan.append((start_gateway(procs, tmp, up_port, 1, True), (50, 1)))
        if not args.no_logs_off:
            plan.append((start_gateway(procs, tmp, up_port, 1, False), (50, 1)))
        if args.workers > 1:
            plan.append((start_gateway(procs, tmp, up_port, args.workers, True), (50,)))
            if not args.no_logs_off:
                plan.append((start_gateway(procs, tmp, up_port, args.workers, False), (50,)))
        if args.baseline:
            plan.append((start_minimal_proxy(procs, tmp, up_port), (50, 1)))
        if args.peer == "litellm":
            plan.append((start_litellm(procs, tmp, up_port, args.litellm_venv), (50, 1)))
        for server, _ in plan:
            if server:
                servers[server.name] = server

        for round_ in range(args.rounds):
            print(f"\nround {round_ + 1}/{args.rounds}:", flush=True)
            for server, conns in plan:
                for connections in conns:
                    if server is None:
                        result = wrk(
                            "upstream direct",
                            direct,
                            direct_lua,
                            connections,
                            args.duration,
                            {"upstream": [upstream.pid]},
                        )
                    else:
                        pids = [server.process.pid, *children(server.process.pid)]
                        result = wrk(
                            server.name,
                            server.url,
                            server.lua,
                            connections,
                            args.duration,
                            {"server": pids, "upstream": [upstream.pid]},
                        )
                    runs.setdefault((result.name, connections), []).append(result)
        for server in servers.values():
            pids = (
                [server.process.pid, *children(server.process.pid)]
                if server.name.startswith("LiteLLM")
                else worker_pids(server)
            )
            server.loaded_rss = sum(rss_mb(pid) for pid in pids)
        if args.profile:
            extra += ["", *profile(servers[GATEWAY_ROW], args.duration, tmp)]
        for server in servers.values():
            procs.stop(server.process)
        if args.clients:
            print("\nupstream clients:", flush=True)
            extra += ["", *client_table(direct, args.duration)]
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    background.append(cpu_busy(2.0))

    # ------------------------------------------------------------ report
    def median(name: str, connections: int) -> Result:
        rs = sorted(runs[(name, connections)], key=lambda r: r.rps)
        mid = rs[len(rs) // 2]
        return Result(
            name,
            connections,
            mid.rps,
            statistics.median(r.p50 for r in rs),
            statistics.median(r.p99 for r in rs),
            sum(r.non2xx for r in rs),
            sum(r.socket_errors for r in rs),
            mid.cpu,
        )

    def per_request(r: Result) -> str:
        """CPU time the server under test (the upstream itself for the direct rows) spent per request."""
        used = r.cpu.get("server", r.cpu.get("upstream"))
        return f"{used / 100 / r.rps * 1e6:,.0f}" if used is not None and r.rps else ""

    def ratio(a: tuple[str, int], b: tuple[str, int]) -> float:
        """req/s of a over b, paired within each round (both met the same background load), median."""
        return statistics.median(x.rps / y.rps for x, y in zip(runs[a], runs[b], strict=False))

    rows = [median(name, c) for name, c in runs]
    by = {(r.name, r.connections): r for r in rows}
    direct50, direct1 = by[("upstream direct", 50)], by[("upstream direct", 1)]
    spread = ""
    if args.rounds > 1:
        spread = " | req/s min-max"
    print(
        f"\n{cores} cores shared by wrk, the upstream and the server under test; wrk -t2 -c50 and -t1 -c1, "
        f"{args.duration} s each, POST /v1/chat/completions ({len(BODY)} byte body)"
        + (f"; median of {args.rounds} interleaved rounds" if args.rounds > 1 else "")
        + f"; other work kept {background[0]:.0f}% of the cores busy before the run and {background[1]:.0f}% "
        "after it" + (" (figures are a floor)" if max(background) > 10 else "") + "\n"
    )
    print(
        "| target | conns | requests/s | p50 ms | p99 ms | added p50 ms | x direct req/s | errors | "
        "CPU % of a core: server / upstream / wrk / other | server CPU µs/req | RSS idle / after MB"
        + spread
        + " |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---" + ("|---" if spread else "") + "|")
    for r in rows:
        base = direct50 if r.connections == 50 else direct1
        added_text = "" if r.name == "upstream direct" else f"{r.p50 - base.p50:+.2f}"
        server = servers.get(r.name)
        rss = f"{server.idle_rss:.0f} / {server.loaded_rss:.0f}" if server else ""
        cpu = " / ".join(
            f"{r.cpu[k]:.0f}" if k in r.cpu else "-" for k in ("server", "upstream", "wrk", "other")
        )
        line = (
            f"| {r.name} | {r.connections} | {r.rps:,.0f} | {r.p50:.2f} | {r.p99:.2f} | {added_text} | "
            f"{r.rps / base.rps:.2f} | {r.non2xx + r.socket_errors} | {cpu} | {per_request(r)} | {rss}"
        )
        if spread:
            all_rps = [x.rps for x in runs[(r.name, r.connections)]]
            line += f" | {min(all_rps):,.0f}-{max(all_rps):,.0f}"
        print(line + " |")
    notes = [f"{s.name}: {', '.join(s.notes)}" for s in servers.values() if s.notes]
    if notes:
        print("\n" + "; ".join(notes))
    print()

    gw50, gw1 = by[(GATEWAY_ROW, 50)], by[(GATEWAY_ROW, 1)]
    gw = servers[GATEWAY_ROW]
    added = gw1.p50 - direct1.p50
    print("targets (1 worker, request log on as shipped):")
    peer = next((s for s in servers if s.startswith("LiteLLM")), None)
    paired = " (ratios: median of per-round ratios)" if args.rounds > 1 else ""
    if peer:
        times = ratio((GATEWAY_ROW, 50), (peer, 50))
        print(
            f"- req/s at 50 conns >= 20x LiteLLM and 3,000+: {gw50.rps:,.0f} req/s = {times:.1f}x "
            f"{peer} ({by[(peer, 50)].rps:,.0f}){paired}: "
            f"{verdict(times >= TARGETS['peer_ratio'] and gw50.rps >= TARGETS['rps'])}"
        )
    else:
        print(
            f"- req/s at 50 conns 3,000+ (20x LiteLLM; run --peer litellm for the ratio): {gw50.rps:,.0f}: "
            f"{verdict(gw50.rps >= TARGETS['rps'])}"
        )
    print(
        f"- added p50 at 1 conn < 1 ms: {gw1.p50:.2f} - {direct1.p50:.2f} = {added:.2f} ms: "
        f"{verdict(added < TARGETS['added_p50_ms'])}"
    )
    print(
        f"- idle RSS < 100 MB: {gw.idle_rss:.1f} MB ({gw.loaded_rss:.1f} MB after load): "
        f"{verdict(gw.idle_rss < TARGETS['idle_rss_mb'])}"
    )
    if args.workers > 1:
        many = (f"gateway, {args.workers} workers, logs on", 50)
        times = ratio(many, (GATEWAY_ROW, 50))
        print(
            f"- {args.workers} workers >= 1.6x one: {by[many].rps:,.0f} vs {gw50.rps:,.0f} req/s, {times:.2f}x{paired}: "
            f"{verdict(times >= TARGETS['workers_ratio'])} (on {cores} cores shared with wrk and the upstream)"
        )
    off = ("gateway, 1 worker, logs off", 50)
    if off in by:
        print(
            f"- request log off: {by[off].rps:,.0f} req/s at 50 conns ({ratio(off, (GATEWAY_ROW, 50)):.2f}x logs "
            f"on{', per-round median' if args.rounds > 1 else ''}), added p50 at 1 conn {by[('gateway, 1 worker, logs off', 1)].p50 - direct1.p50:.2f} ms"
        )
    for line in extra:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
