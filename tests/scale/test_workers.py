"""Engine workers that scale to zero: ``provider: local`` with ``engine.workers`` runs the engine as
``python -m local_engine serve`` processes the gateway starts on demand, stops when idle, replaces when they
die, and routes to by prompt prefix. Through real HTTP with the OpenAI SDK; time moved by a ManualClock."""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from policies.clock import ManualClock
from tests.conftest import KEY, config_text
from tests.wait import wait_for

pytestmark = pytest.mark.timeout(240)


def engine_models(name: str, path: Path, **workers: Any) -> str:
    limits = ", ".join(f"{k}: {v}" for k, v in {"min": 0, "max": 1, "idle_s": 300, **workers}.items())
    return f"""  - name: {name}
    deployments:
      - provider: local
        name: {name}-engine
        model: tiny
        model_path: {path}
        engine: {{kv_cache_gib: 0.01, load_timeout_s: 120, workers: {{{limits}}}}}"""


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def worker_processes() -> list[tuple[int, int]]:
    """(pid, port) of the engine workers this test process started (the gateway runs in a thread here)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"local_engine" in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append((int(entry), int(cmdline[cmdline.index(b"--port") + 1])))
    return found


def ask(url: str, alias: str, content: str, **extra: Any) -> Any:
    with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=180) as client:
        return client.chat.completions.create(
            model=alias,
            messages=[{"role": "user", "content": content}],
            **{"max_tokens": 4, "temperature": 0, **extra},
        )


def killed_under_a_request(url: str, alias: str, prompt: str, pid: int) -> None:
    """``pid`` frozen (it still accepts the connection, so the request is in flight on it), a 20-token request
    sent, then ``pid`` killed before it answers: the request must be answered in full by a replacement."""
    os.kill(pid, signal.SIGSTOP)
    answers: list[Any] = []
    errors: list[Exception] = []

    def long_request() -> None:
        try:
            answers.append(ask(url, alias, prompt, max_tokens=20, extra_body={"ignore_eos": True}))
        except Exception as exc:  # reported below
            errors.append(exc)

    request = threading.Thread(target=long_request)
    request.start()
    wait_for(lambda: errors or metric(url, "gateway_in_flight_requests") >= 1, timeout=60)
    assert not errors, errors
    os.kill(pid, signal.SIGKILL)  # dies before answering
    request.join(timeout=180)
    assert not errors, errors
    assert answers[0].usage.completion_tokens == 20  # answered in full by the replacement


def test_a_worker_starts_on_the_first_request_and_stops_when_idle(upstream, start_gateway, tiny_model_path):
    clock = ManualClock()
    gateway = start_gateway(config_text(upstream[0].url, engine_models("cold", tiny_model_path)), clock=clock)
    ready = httpx.get(gateway.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["deployments"]["starting"] == []
    assert worker_processes() == []  # min 0: nothing runs before a request

    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(ask(gateway.url, "cold", "the quick brown fox")))
    first.start()
    # while the worker starts, the request waits and /readyz says so (yet stays ready: the gateway serves)
    wait_for(
        lambda: (
            httpx.get(gateway.url + "/readyz", timeout=10).json()["deployments"]["starting"]
            == ["cold-engine"]
        ),
        timeout=60,
    )
    first.join(timeout=180)
    assert answers and answers[0].choices[0].message.content is not None
    assert answers[0].usage.completion_tokens >= 1
    assert (
        metric(gateway.url, "gateway_engine_worker_cold_start_seconds_count", deployment="cold-engine") == 1
    )
    assert metric(gateway.url, "gateway_engine_workers", deployment="cold-engine", state="ready") == 1
    assert len(worker_processes()) == 1

    clock.advance(301)  # idle_s 300 passed without a request
    wait_for(
        lambda: metric(gateway.url, "gateway_engine_workers", deployment="cold-engine", state="ready") == 0,
        timeout=30,
    )
    wait_for(lambda: worker_processes() == [], timeout=30)
    assert (
        metric(gateway.url, "gateway_engine_worker_exits_total", deployment="cold-engine", reason="idle") == 1
    )

    # from zero again: the next request starts a new worker
    assert ask(gateway.url, "cold", "a paged cache").usage.completion_tokens >= 1
    assert (
        metric(gateway.url, "gateway_engine_worker_cold_start_seconds_count", deployment="cold-engine") == 2
    )


def test_a_worker_that_dies_is_replaced_and_its_request_retried(upstream, start_gateway, tiny_model_path):
    gateway = start_gateway(config_text(upstream[0].url, engine_models("hardy", tiny_model_path, min=1)))
    wait_for(
        lambda: metric(gateway.url, "gateway_engine_workers", deployment="hardy-engine", state="ready") == 1,
        timeout=120,
    )
    [(pid, _)] = worker_processes()
    killed_under_a_request(gateway.url, "hardy", "the lazy dog", pid)
    [(new_pid, _)] = worker_processes()
    assert new_pid != pid
    assert (
        metric(gateway.url, "gateway_engine_worker_exits_total", deployment="hardy-engine", reason="died")
        == 1
    )
    assert (
        metric(gateway.url, "gateway_engine_worker_cold_start_seconds_count", deployment="hardy-engine") == 2
    )


def requests_by_worker(url: str, deployment: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    pattern = rf'gateway_engine_worker_requests_total\{{deployment="{deployment}",worker="(\w+)"\}} (\S+)'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text)}


def test_requests_sharing_a_prefix_go_to_the_same_worker(upstream, start_gateway, tiny_model_path):
    gateway = start_gateway(
        config_text(upstream[0].url, engine_models("fleet", tiny_model_path, min=2, max=2))
    )
    wait_for(
        lambda: metric(gateway.url, "gateway_engine_workers", deployment="fleet-engine", state="ready") == 2,
        timeout=180,
    )
    chosen: dict[str, set[str]] = {"fox": set(), "cache": set()}
    for i in range(4):
        for topic, system in (
            ("fox", "the quick brown fox jumps over the lazy dog. " * 8),
            ("cache", "a paged cache keeps keys and values in blocks. " * 8),
        ):
            before = requests_by_worker(gateway.url, "fleet-engine")
            with openai.OpenAI(
                base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=60
            ) as client:
                client.chat.completions.create(
                    model="fleet",
                    max_tokens=2,
                    messages=[
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"question {i}"},
                    ],
                )
            after = requests_by_worker(gateway.url, "fleet-engine")
            [worker] = [w for w in after if after[w] > before.get(w, 0)]
            chosen[topic].add(worker)
    assert len(chosen["fox"]) == 1 and len(chosen["cache"]) == 1, chosen


def test_a_busy_worker_makes_the_pool_start_another(upstream, start_gateway, tiny_model_path):
    gateway = start_gateway(
        config_text(upstream[0].url, engine_models("busy", tiny_model_path, min=1, max=2, target_inflight=1))
    )
    wait_for(
        lambda: metric(gateway.url, "gateway_engine_workers", deployment="busy-engine", state="ready") == 1,
        timeout=120,
    )
    assert ask(gateway.url, "busy", "continuous batching").usage.completion_tokens >= 1
    # that request held the only worker at its target of 1 in flight: a second one started
    wait_for(
        lambda: metric(gateway.url, "gateway_engine_workers", deployment="busy-engine", state="ready") == 2,
        timeout=120,
    )
    assert len(worker_processes()) == 2


def test_workers_get_the_deployments_speculative_and_quantization_settings(
    upstream, start_gateway, tiny_model_path
):
    engine = (
        "engine: {kv_cache_gib: 0.01, load_timeout_s: 120, quantization: int8, "
        "speculative: {method: ngram, num_tokens: 3, min_acceptance: 0.0}, workers: {min: 0, max: 1}}"
    )
    models = engine_models("spec", tiny_model_path).replace(
        "engine: {kv_cache_gib: 0.01, load_timeout_s: 120, workers: {min: 0, max: 1, idle_s: 300}}", engine
    )
    gateway = start_gateway(config_text(upstream[0].url, models), clock=ManualClock())
    # A prompt that repeats itself: n-gram lookup finds drafts as soon as decoding starts.
    answer = ask(gateway.url, "spec", "the quick brown fox " * 6, max_tokens=12)
    assert answer.choices[0].message.content is not None
    [(pid, port)] = worker_processes()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--quantization") + 1] == b"int8"
    stats = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).json()
    assert stats["spec_draft_tokens_total"] > 0  # the worker's engine speculates as configured


def split_processes() -> dict[str, tuple[int, int]]:
    """{role: (pid, port)} of the disaggregated worker's processes this test process started."""
    found = {}
    for pid, port in worker_processes():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"route" in cmdline:
            found["router"] = (pid, port)
        elif b"--role" in cmdline:
            found[cmdline[cmdline.index(b"--role") + 1].decode()] = (pid, port)
    return found


def test_a_disaggregated_worker_runs_as_prefill_decode_and_router_and_is_replaced_as_one(
    upstream, start_gateway, tiny_model_path
):
    clock = ManualClock()
    whole = f"""  - name: whole
    deployments:
      - provider: local
        model: tiny
        model_path: {tiny_model_path}
        engine: {{kv_cache_gib: 0.01}}"""
    models = engine_models("split", tiny_model_path, disaggregated="true") + "\n" + whole
    gateway = start_gateway(config_text(upstream[0].url, models), clock=clock)
    prompt = "the quick brown fox jumps over the lazy dog"

    split = ask(gateway.url, "split", prompt, max_tokens=12, extra_body={"ignore_eos": True})
    first = split_processes()
    assert sorted(first) == ["decode", "prefill", "router"]
    stats = httpx.get(f"http://127.0.0.1:{first['router'][1]}/router/stats", timeout=10).json()
    assert stats["counts"]["disaggregated"] == 1  # prefilled on one process, decoded on the other
    # greedy: the same tokens as the engine in one piece
    reference = ask(gateway.url, "whole", prompt, max_tokens=12, extra_body={"ignore_eos": True})
    assert split.choices[0].message.content == reference.choices[0].message.content
    assert split.usage.completion_tokens == 12

    # its decode process dies under a request: the three are replaced as one, the request sent once more
    killed_under_a_request(gateway.url, "split", prompt, first["decode"][0])
    assert (
        metric(gateway.url, "gateway_engine_worker_exits_total", deployment="split-engine", reason="died")
        == 1
    )
    old = {pid for pid, _ in first.values()}
    wait_for(lambda: not old & {pid for pid, _ in split_processes().values()}, timeout=30)  # reaped
    assert sorted(split_processes()) == ["decode", "prefill", "router"]
    assert (
        metric(gateway.url, "gateway_engine_worker_cold_start_seconds_count", deployment="split-engine") == 2
    )

    clock.advance(301)  # idle: all three stop, down to zero
    wait_for(lambda: split_processes() == {}, timeout=30)
