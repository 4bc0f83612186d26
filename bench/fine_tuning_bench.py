"""Fine-tuning: the gateway's latency while a LoRA training runs beside it, and the training's pace.

The fake upstreams run in one process, the gateway (one worker, state in memory, the bundled SmolLM2 as a
local alias to fine-tune) in another; the training in a third, started by the gateway. This process sends
``--requests`` chat requests one after another to the fake upstream through the gateway, before and while a
job trains on SmolLM2-135M-Instruct (rank 8), then cancels the job (or lets it finish with ``--finish``).

    .venv/bin/python bench/fine_tuning_bench.py [--requests 300] [--threads 1] [--nice 10] [--finish]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.batch_bench import wait_ready  # noqa: E402
from bench.providers_bench import KEY, MESSAGES, config  # noqa: E402
from tests.finetune.dataset import examples, jsonl  # noqa: E402
from tests.harness import free_port  # noqa: E402

DEADLINE_S = 1800


def latencies(client: httpx.Client, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        answer = client.post(
            "/v1/chat/completions", json={"model": "openai", "messages": MESSAGES, "max_tokens": 16}
        )
        out.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text
    return out


def row(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"| {label} | {len(ms)} | {statistics.median(ms):.2f} | {p99:.2f} | {max(ms):.2f} |"


def job_until(client: httpx.Client, job_id: str, done: object) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if done(job):  # type: ignore[operator]
            return job
        if time.monotonic() > deadline or job["status"] == "failed":
            raise SystemExit(f"job {job['status']}: {job.get('error')}")
        time.sleep(0.2)


def metrics(client: httpx.Client, job_id: str) -> list[dict]:
    page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return [e["data"] for e in reversed(page) if e["type"] == "metrics"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--finish", action="store_true", help="let the job train to the end (3 epochs)")
    args = parser.parse_args()
    ports = [free_port() for _ in range(4)]
    fakes = subprocess.Popen(
        [sys.executable, "-c", f"from bench.providers_bench import serve_fakes; serve_fakes({ports})"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert fakes.stdout is not None and fakes.stdout.readline().strip() == b"ready"
    with tempfile.TemporaryDirectory() as tmp:
        gateway_port = free_port()
        path = Path(tmp) / "config.yaml"
        text = config(ports, gateway_port).replace(
            "tenants:",
            """  - name: smollm2
    deployments: [{provider: local, model: smollm2, engine: {max_num_seqs: 4, kv_cache_gib: 0.02}}]
tenants:""",
        )
        path.write_text(
            text + f"files:\n  dir: {tmp}/files\nfine_tuning:\n  dir: {tmp}/ft\n  poll_s: 0.1\n"
            f"  threads: {args.threads}\n  nice: {args.nice}\n"
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
                latencies(client, 20)  # warm-up
                idle = latencies(client, args.requests)
                file_id = client.post(
                    "/v1/files",
                    files={"file": ("t.jsonl", jsonl(examples(12)))},
                    data={"purpose": "fine-tune"},
                ).json()["id"]
                created = time.perf_counter()
                job = client.post(
                    "/v1/fine_tuning/jobs",
                    json={
                        "model": "smollm2",
                        "training_file": file_id,
                        "seed": 1,
                        "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 3},
                    },
                ).json()
                job_until(
                    client, job["id"], lambda j: metrics(client, j["id"])
                )  # training, past its first step
                training = latencies(client, args.requests)
                if args.finish:
                    done = job_until(client, job["id"], lambda j: j["status"] == "succeeded")
                    seconds = time.perf_counter() - created
                else:
                    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
                    done = job_until(client, job["id"], lambda j: j["status"] == "cancelled")
                    seconds = None
                steps = metrics(client, job["id"])
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)
            fakes.send_signal(signal.SIGTERM)
            fakes.wait(timeout=10)
    print(
        f"gateway latency, fake upstream, one request at a time (training: {args.threads} thread(s), "
        f"nice {args.nice})"
    )
    print("| while | requests | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    print(row("idle", idle))
    print(row("training", training))
    print()
    print("| job | steps seen | first loss | last loss | trained tokens | seconds to succeed |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {done['status']} | {len(steps)} | {steps[0]['train_loss']:.3f} | {steps[-1]['train_loss']:.3f} | "
        f"{done['trained_tokens'] or '-'} | {f'{seconds:.0f}' if seconds else '-'} |"
    )


if __name__ == "__main__":
    main()
