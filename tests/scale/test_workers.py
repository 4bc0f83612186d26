"""Engine workers that scale to zero: ``provider: local`` with ``engine.workers`` runs the engine as
``python -m local_engine serve`` processes the gateway starts on demand, stops when idle, replaces when they
die, and routes to by prompt prefix. Through real HTTP with the OpenAI SDK; time moved by a ManualClock."""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.auth import hash_key
from gateway.config import ConfigError, parse_config
from policies.clock import ManualClock
from tests.conftest import KEY, config_text
from tests.local_engine.conftest import ADAPTERS, make_adapter
from tests.policies.conftest import ADMIN_KEY, settled, usage
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


def role_processes() -> dict[str, list[tuple[int, int]]]:
    """{role: [(pid, port), ...] by port} of the disaggregated workers' processes this test process started."""
    found: dict[str, list[tuple[int, int]]] = {}
    for pid, port in sorted(worker_processes(), key=lambda p: p[1]):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"route" in cmdline:
            found.setdefault("router", []).append((pid, port))
        elif b"--role" in cmdline:
            found.setdefault(cmdline[cmdline.index(b"--role") + 1].decode(), []).append((pid, port))
    return found


def split_processes() -> dict[str, tuple[int, int]]:
    """{role: (pid, port)} of a disaggregated worker of one process per role."""
    return {role: found[0] for role, found in role_processes().items()}


def whole_model(path: Path) -> str:
    """Alias ``whole``: the engine in one piece, in the gateway's process (the greedy reference)."""
    return f"""  - name: whole
    deployments:
      - provider: local
        model: tiny
        model_path: {path}
        engine: {{kv_cache_gib: 0.01}}"""


def test_a_disaggregated_worker_runs_as_prefill_decode_and_router_and_is_replaced_as_one(
    upstream, start_gateway, tiny_model_path
):
    clock = ManualClock()
    models = (
        engine_models("split", tiny_model_path, disaggregated="true") + "\n" + whole_model(tiny_model_path)
    )
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


def test_per_role_counts_need_a_disaggregated_worker_with_a_prefill_and_a_decode_process(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a model directory as far as the config can tell
    for workers, problem in (
        ({"disaggregated": "true", "prefill": 0}, "prefill: Input should be greater than or equal to 1"),
        ({"disaggregated": "true", "decode": 0}, "decode: Input should be greater than or equal to 1"),
        ({"both": 1}, "both apply only with disaggregated: true"),
    ):
        with pytest.raises(ConfigError) as error:
            parse_config(config_text("http://127.0.0.1:9", engine_models("bad", tmp_path, **workers)))
        assert problem in str(error.value), str(error.value)
    parse_config(
        config_text("http://127.0.0.1:9", engine_models("ok", tmp_path, disaggregated="true", both=1))
    )


def engine_flags(pid: int) -> list[bytes]:
    """A ``serve`` process's command line less what differs between a worker's engines (port, role)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for flag in (b"--port", b"--role"):
        del cmdline[cmdline.index(flag) : cmdline.index(flag) + 2]
    return cmdline


def test_a_disaggregated_worker_of_two_prefill_processes_spreads_them_and_falls_back_to_its_both_process(
    upstream, start_gateway, tiny_model_path, tmp_path
):
    clock = ManualClock()
    make_adapter(tiny_model_path, tmp_path / "attn", *ADAPTERS["attn"], seed=0)
    roles = engine_models("roles", tiny_model_path, disaggregated="true", prefill=2, decode=1, both=1)
    roles = roles.replace(
        "load_timeout_s: 120,", f"load_timeout_s: 120, loras: {{attn: {tmp_path / 'attn'}}},"
    )
    gateway = start_gateway(
        config_text(upstream[0].url, roles + "\n" + whole_model(tiny_model_path)), clock=clock
    )
    prompts = ["the quick brown fox jumps over the lazy dog", "a paged cache keeps keys and values in blocks"]

    def text(alias: str, prompt: str) -> str | None:
        answer = ask(gateway.url, alias, prompt, max_tokens=8, extra_body={"ignore_eos": True})
        assert answer.usage.completion_tokens == 8
        return answer.choices[0].message.content

    reference = {prompt: text("whole", prompt) for prompt in prompts}

    def answers_as_whole(prompt: str) -> bool:
        return text("roles", prompt) == reference[prompt]

    def stats(port: int, path: str) -> Any:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).json()

    def counts() -> dict[str, int]:
        return stats(first["router"][0][1], "/router/stats")["counts"]

    def prefills_saved() -> list[int]:
        return [stats(port, "/v1/disagg/status")["saved_total"] for _, port in first["prefill"]]

    assert answers_as_whole(prompts[0])  # the first request starts the worker
    first = role_processes()
    assert {role: len(found) for role, found in first.items()} == dict(prefill=2, decode=1, both=1, router=1)
    engines = [pid for role in ("prefill", "decode", "both") for pid, _ in first[role]]
    assert all(engine_flags(pid) == engine_flags(engines[0]) for pid in engines)  # the deployment's, each
    assert answers_as_whole(prompts[1])
    assert counts() == {"disaggregated": 2, "aggregated": 0, "prefill_failed": 0}
    assert prefills_saved() == [1, 1]  # the two prefills went one to each prefill process
    adapted = text("roles:attn", prompts[0])  # the adapter on each engine
    assert adapted != reference[prompts[0]]

    # both prefill processes die: the decode and both processes still serve, so the worker does (whole, on
    # its both process) while the pool starts the two again on their ports
    killed = {pid for pid, _ in first["prefill"]}
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not killed & {pid for pid, _ in worker_processes()}, timeout=30)
    assert answers_as_whole(prompts[0])
    assert counts() == {"disaggregated": 3, "aggregated": 1, "prefill_failed": 2}
    assert stats(first["both"][0][1], "/metrics")["requests_finished_total"] == 1

    restarts = "gateway_engine_worker_process_restarts_total"
    wait_for(
        lambda: metric(gateway.url, restarts, deployment="roles-engine", role="prefill") == 2, timeout=120
    )
    again = role_processes()
    assert [port for _, port in again["prefill"]] == [port for _, port in first["prefill"]]
    assert not killed & {pid for pid, _ in again["prefill"]}
    assert all(again[role] == first[role] for role in ("decode", "both", "router"))  # the worker kept them
    assert metric(gateway.url, "gateway_engine_worker_exits_total", deployment="roles-engine") == 0
    # once the router's pause on the refused ports (5 s) ends, prefills go to the new processes, which were
    # started with the pool's adapter: each prefills one adapted request
    wait_for(lambda: answers_as_whole(prompts[1]) and counts()["disaggregated"] > 3, timeout=60)
    before = prefills_saved()
    assert [text("roles:attn", prompts[0]) for _ in range(2)] == [adapted] * 2
    assert [n - b for n, b in zip(prefills_saved(), before, strict=True)] == [1, 1]

    clock.advance(301)  # idle: the router and its four engines stop, down to zero
    wait_for(lambda: role_processes() == {}, timeout=30)
    started = {pid for found in (*first.values(), *again.values()) for pid, _ in found}
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in started), timeout=30)  # reaped


RESUMED_TOKENS = 160  # long enough that the worker is still generating when it is killed (the context is 256)


@dataclass
class Streamed:
    request_id: str
    text: str
    ids: set[str]  # the chunks' ids (one stream: one id)
    roles: int  # chunks whose delta named the role
    usage: Any
    extra: set[str]  # fields of the choices beyond OpenAI's


def streamed(
    url: str, alias: str, chat: bool, prompt: str, kill: int | None = None, **extra: Any
) -> Streamed:
    """A greedy stream of ``RESUMED_TOKENS`` through the gateway; with ``kill`` (a worker's pid), that worker
    killed once two chunks have reached the client."""
    with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=180) as client:
        kwargs: dict[str, Any] = dict(
            max_tokens=RESUMED_TOKENS,
            temperature=0,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
            **extra,
        )
        raw: Any
        if chat:
            messages: Any = [{"role": "user", "content": prompt}]
            raw = client.chat.completions.with_raw_response.create(
                model=alias, messages=messages, stream=True, **kwargs
            )
        else:
            raw = client.completions.with_raw_response.create(
                model=alias, prompt=prompt, stream=True, **kwargs
            )
        text: list[str] = []
        ids: set[str] = set()
        fields: set[str] = set()
        roles, usage = 0, None
        for chunk in raw.parse():
            ids.add(chunk.id)
            if chunk.choices:
                choice = chunk.choices[0]
                fields |= set(choice.model_extra or ())
                if chat:
                    roles += choice.delta.role is not None
                    text.append(choice.delta.content or "")
                else:
                    text.append(choice.text)
                if kill is not None and len(text) == 2:
                    os.kill(kill, signal.SIGKILL)
            if chunk.usage is not None:
                usage = chunk.usage
    return Streamed(raw.headers["x-request-id"], "".join(text), ids, roles, usage, fields)


def ledger_record(gateway: Any, request_id: str) -> list[dict[str, Any]]:
    """The ledger's records of ``request_id`` (tenant acme), once settled."""
    settled(gateway)
    records = usage(gateway, tenant="acme", group_by="request").json()["data"]
    return [r for r in records if r.get("request_id") == request_id]


def test_a_stream_whose_worker_dies_midway_goes_on_from_another_worker(
    upstream, start_gateway, tiny_model_path
):
    admin = f'admin:\n  keys: ["{hash_key(ADMIN_KEY)}"]\n'
    gateway = start_gateway(config_text(upstream[0].url, engine_models("resume", tiny_model_path)) + admin)
    resumes = "gateway_engine_worker_stream_resumes_total"
    prompt = "continuous batching"  # the tiny model's answers to it come a token a chunk
    for n, chat in enumerate((True, False), start=1):
        reference = streamed(gateway.url, "resume", chat, prompt)  # starts a worker (min 0), or uses it
        assert reference.usage.completion_tokens == RESUMED_TOKENS
        [(pid, _)] = worker_processes()
        resumed = streamed(gateway.url, "resume", chat, prompt, kill=pid)
        assert metric(gateway.url, resumes, deployment="resume-engine") == n  # it did die midway
        assert resumed.text == reference.text  # greedy: the text of an uninterrupted run
        assert len(resumed.ids) == 1 and resumed.roles == (1 if chat else 0)  # one stream
        assert "token_ids" not in resumed.extra  # the pool's own field stays between it and the workers
        # one answer: the prompt once, every token generated on either worker
        assert (resumed.usage.prompt_tokens, resumed.usage.completion_tokens) == (
            reference.usage.prompt_tokens,
            RESUMED_TOKENS,
        )
        [record] = ledger_record(gateway, resumed.request_id)
        assert (record["status"], record["prompt_tokens"], record["completion_tokens"]) == (
            200,
            reference.usage.prompt_tokens,
            RESUMED_TOKENS,
        )
        [(new_pid, _)] = worker_processes()  # the worker that went on with it
        assert new_pid != pid

    # logprobs cannot be spliced: the client gets the stream's error event, as before
    [(pid, _)] = worker_processes()
    with pytest.raises(openai.APIError):
        streamed(gateway.url, "resume", True, prompt, kill=pid, logprobs=True)
    assert metric(gateway.url, resumes, deployment="resume-engine") == 2
    died = "gateway_engine_worker_exits_total"
    wait_for(lambda: metric(gateway.url, died, deployment="resume-engine", reason="died") == 3, timeout=30)
