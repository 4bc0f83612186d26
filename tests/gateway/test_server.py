"""The real CLI: ``python -m gateway serve`` with workers, its logs, and a graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai

from tests.conftest import KEY, UPSTREAM_KEY, config_text, failure_models
from tests.harness import free_port, serve_argv
from tests.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]


def start_serve(tmp_path, upstream_url, *, workers=1, server=""):
    config = tmp_path / "config.yaml"
    config.write_text(config_text(upstream_url, failure_models(upstream_url), server=server))
    stdout = tmp_path / "stdout.log"
    process, url = start_serve_with(config, {}, workers=workers, stdout=stdout)
    return process, url, stdout


def start_serve_with(config, env, *, workers=1, stdout=None):
    """``python -m gateway serve`` on a free loopback port; returns once /readyz answers 200."""
    port = free_port()
    log = stdout.open("wb") if stdout else None
    process = subprocess.Popen(
        serve_argv(str(config), str(port), workers=str(workers)),
        cwd=ROOT,
        stdout=subprocess.DEVNULL if log is None else log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    if log is not None:
        log.close()  # the child writes through its own copy of the descriptor
    url = f"http://127.0.0.1:{port}"
    deadline = (
        time.monotonic() + 120
    )  # a generous bound: several processes importing at once on a busy machine
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        assert process.poll() is None, stdout.read_text() if stdout else "gateway exited"
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise AssertionError("gateway did not become ready")


def log_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_two_workers_share_one_port_and_metrics(tmp_path, upstream):
    process, url, stdout = start_serve(tmp_path, upstream[0].url, workers=2)
    metrics_dir = Path(next(x["metrics_dir"] for x in log_lines(stdout) if x.get("event") == "supervising"))
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as client:
            for i in range(20):
                assert (
                    client.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": f"m{i}"}]
                    )
                    .choices[0]
                    .message.content
                )
        metrics = httpx.get(url + "/metrics").text  # any one worker reports all workers' counts
        line = next(
            x
            for x in metrics.splitlines()
            if x.startswith('gateway_requests_total{alias="chat",status="200",tenant="acme"}')
        )
        assert float(line.rsplit(" ", 1)[1]) == 20
        assert any(metrics_dir.iterdir())
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, stdout.read_text()[-3000:]
    assert not metrics_dir.exists()  # the supervisor's temporary metrics directory is removed on exit


def test_sigterm_while_workers_still_start_is_a_clean_stop(tmp_path, upstream):
    """A stop sent while the workers are still importing (a deploy that rolls back at once) exits 0:
    the worker waits for its handler instead of dying by the signal's default action."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text(upstream[0].url, failure_models(upstream[0].url)))
    stdout = tmp_path / "stdout.log"
    with stdout.open("wb") as log:
        process = subprocess.Popen(
            serve_argv(str(config), str(free_port()), workers="2"),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # "supervising" is logged right after the workers are spawned, long before they have imported
        # the gateway (a second or more), so the SIGTERM reaches them mid-import.
        wait_for(
            lambda: '"supervising"' in stdout.read_text(),
            timeout=120,  # an interpreter importing the gateway: more than 10 s on a machine at load 20
            what="the supervisor to spawn its workers",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, stdout.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "worker died" not in stdout.read_text()


def test_sigterm_lets_a_running_stream_finish_then_exits_0(tmp_path, upstream):
    process, url, stdout = start_serve(tmp_path, upstream[0].url, server="  drain_timeout_s: 10")
    received: list[str] = []

    def consume() -> None:
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as client:
            for chunk in client.chat.completions.create(
                model="slow", stream=True, messages=[{"role": "user", "content": "x"}]
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)

    reader = threading.Thread(target=consume)
    reader.start()
    wait_for(lambda: received, what="the stream under way")
    process.send_signal(signal.SIGTERM)

    def refused() -> bool:  # no longer accepting, while the stream goes on
        try:
            httpx.get(url + "/healthz", timeout=2)
        except httpx.TransportError:
            return True
        return False

    wait_for(refused, what="the draining gateway to stop accepting")
    reader.join(timeout=20)
    assert process.wait(timeout=20) == 0
    assert len(received) == 10  # every chunk arrived
    events = [line["event"] for line in log_lines(stdout)]
    assert events.index("draining") < events.index("stopped")


def test_one_json_log_line_per_request_without_keys_or_prompts(tmp_path, upstream):
    process, url, stdout = start_serve(tmp_path, upstream[0].url)
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as client:
            client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "secret-prompt-42"}]
            )
        httpx.post(
            url + "/v1/chat/completions", headers={"Authorization": "Bearer gw-wrong-key-123"}, json={}
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    text = stdout.read_text()
    assert KEY not in text and UPSTREAM_KEY not in text and "gw-wrong-key-123" not in text
    assert "secret-prompt-42" not in text
    requests = [line for line in log_lines(stdout) if line["event"] == "request"]
    assert len(requests) == 2
    ok, denied = requests
    assert ok["tenant"] == "acme" and ok["alias"] == "chat" and ok["status"] == 200
    assert ok["deployment"] == "openai-compatible/fake-model" and ok["completion_tokens"] == 2
    assert ok["latency_ms"] > 0 and ok["request_id"]
    assert denied["status"] == 401 and denied["tenant"] == "-"


def test_prompts_are_logged_only_when_configured(tmp_path, upstream):
    process, url, stdout = start_serve(tmp_path, upstream[0].url, server="  log_prompts: true")
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as client:
            client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "visible-prompt"}]
            )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert "visible-prompt" in stdout.read_text()


def test_a_worker_freezes_what_start_up_made_and_collects_young_objects_less_often():
    """tune_gc (called by each worker once it listens): start-up's objects frozen out of later
    collections, young collections every 10,000 net allocations. In a process of its own: the tests' GC stays
    as it is."""
    script = (
        "import gc; from gateway.server import GC_THRESHOLD, tune_gc; tune_gc(); "
        "print(gc.get_threshold()[0] == GC_THRESHOLD, gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
