"""The bundled engine behind the gateway: in-process (SmolLM2 and a tiny random model) and over HTTP
(a real ``python -m local_engine serve`` subprocess), through the real openai SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from backends import Endpoint
from backends.config import DeploymentConfig
from backends.local import LocalBackend
from errors import Unavailable
from gateway.app import build_app
from gateway.auth import hash_key
from gateway.config import ConfigError, load_config, parse_config
from gateway.keys import GATEWAY
from tests.conftest import KEY
from tests.harness import ServerThread, free_port
from tests.local_engine.conftest import _build
from tests.openapi import validate

ROOT = Path(__file__).resolve().parents[2]
QUESTION: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]


def _config(models: str) -> str:
    return f"""
models:
{models}
tenants:
  - name: acme
    keys: ["{hash_key(KEY)}"]
"""


def _start(models: str) -> ServerThread:
    loaded = parse_config(_config(models), path="test-config.yaml", env={})
    return ServerThread(lambda: build_app(loaded)).start()


def _wait_ready(server: ServerThread, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(server.url + "/readyz", timeout=10).json()
        if body["status"] == "ready" or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def _backend(server: ServerThread) -> LocalBackend:
    assert server.app is not None
    backend = server.app[GATEWAY].backends[0]
    assert isinstance(backend, LocalBackend)
    return backend


def _client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny") / "llama", "llama")


def smollm2_server(engine: str) -> Iterator[ServerThread]:
    """A gateway in front of the bundled engine serving SmolLM2 in process (``engine``: its YAML mapping),
    ready, stopped when the generator closes."""
    server = _start(f"""
  - name: smollm2
    deployments:
      - provider: local
        model: SmolLM2-135M-Instruct
        engine: {engine}
""")
    assert _wait_ready(server)["status"] == "ready"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def smollm2_gateway() -> Iterator[ServerThread]:
    yield from smollm2_server("{max_num_seqs: 8, kv_cache_gib: 0.05, max_model_len: 128}")


@pytest.fixture(scope="module")
def tiny_gateway(tiny_model: Path) -> Iterator[ServerThread]:
    server = _start(f"""
  - name: tiny
    deployments:
      - provider: local
        model: tiny-llama
        model_path: {tiny_model}
        engine: {{block_size: 4, num_kv_blocks: 64}}
""")
    assert _wait_ready(server)["status"] == "ready"
    yield server
    server.stop()


def _stream_events(server: ServerThread, body: dict[str, Any]) -> list[str]:
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_smollm2_answers_through_the_gateway(smollm2_gateway: ServerThread) -> None:
    with _client(smollm2_gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2", messages=QUESTION, max_tokens=24, temperature=0
        )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    answer = raw.parse()
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.model == "SmolLM2-135M-Instruct"
    assert answer.usage is not None and answer.usage.prompt_tokens > 10 and answer.usage.completion_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert raw.http_response.headers["x-gateway-deployment"] == "local/SmolLM2-135M-Instruct"


def test_smollm2_streams_through_the_gateway(smollm2_gateway: ServerThread) -> None:
    with _client(smollm2_gateway) as client:
        stream = client.chat.completions.create(
            model="smollm2",
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    )
    # Raw events, without include_usage: valid chunks of OpenAI's schema, no usage chunk, then [DONE].
    events = _stream_events(
        smollm2_gateway,
        {"model": "smollm2", "messages": QUESTION, "max_tokens": 4, "temperature": 0, "stream": True},
    )
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event)
        validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["choices"] and chunk.get("usage") is None
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_errors_are_openai_shaped_400s(smollm2_gateway: ServerThread) -> None:
    with _client(smollm2_gateway) as client:
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "word " * 200}], max_tokens=4
            )
        with pytest.raises(openai.BadRequestError) as bad_param:
            client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4, top_logprobs=3)
        with pytest.raises(openai.BadRequestError) as tools:
            client.chat.completions.create(
                model="smollm2",
                messages=QUESTION,
                max_tokens=4,
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                tool_choice={"type": "function", "function": {"name": "g"}},
            )
        with pytest.raises(openai.BadRequestError) as embeddings:
            client.embeddings.create(model="smollm2", input="x")
        with pytest.raises(openai.BadRequestError) as stream_too_long:
            client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "word " * 200}],
                max_tokens=4,
                stream=True,
            )
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "messages"
    assert "128 tokens" in too_long.value.message
    assert stream_too_long.value.code == "context_length_exceeded"
    assert bad_param.value.param == "top_logprobs"
    assert tools.value.param == "tool_choice" and "'g'" in tools.value.message
    assert embeddings.value.code == "unsupported_endpoint"
    for error in (too_long, bad_param, tools, embeddings):
        body = error.value.response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "invalid_request_error"


def test_client_disconnect_aborts_the_sequence_and_frees_its_blocks(smollm2_gateway: ServerThread) -> None:
    engine = _backend(smollm2_gateway).engine
    assert engine is not None
    body = orjson.dumps(
        {"model": "smollm2", "stream": True, "messages": QUESTION, "max_tokens": 100, "ignore_eos": True}
    )
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    generated = engine.metrics["generation_tokens_total"]
    assert generated is not None
    with socket.create_connection(("127.0.0.1", smollm2_gateway.port), timeout=60) as sock:
        sock.sendall(request)
        assert b"200 OK" in sock.recv(65536)
        assert engine.metrics["running_seqs"] == 1
    deadline = time.monotonic() + 30
    while (
        engine.engine.has_unfinished() or engine.engine.block_manager.num_used_blocks
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.engine.has_unfinished()
    assert engine.engine.block_manager.num_used_blocks == 0
    assert (engine.metrics["generation_tokens_total"] or 0) - generated < 100


def test_engine_metrics_and_readiness(smollm2_gateway: ServerThread) -> None:
    with _client(smollm2_gateway) as client:
        for _ in range(2):
            client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2)
    ready = httpx.get(smollm2_gateway.url + "/readyz").json()
    assert ready["deployments"]["loading"] == [] and ready["deployments"]["failed"] == []
    label = '{deployment="local/SmolLM2-135M-Instruct"}'
    engine = _backend(smollm2_gateway).engine
    assert engine is not None

    def generated() -> float:
        return float(engine.metrics["generation_tokens_total"] or 0)

    deadline = time.monotonic() + 10
    while True:  # the gauges follow the engine once a second
        text = httpx.get(smollm2_gateway.url + "/metrics").text
        values = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line.startswith("gateway_local_engine_") and label in line
        }
        # settled: a refresh that came after both requests ended
        settled = values.get(f"gateway_local_engine_generation_tokens_total{label}") == generated() and all(
            values[f"gateway_local_engine_{name}{label}"] == 0
            for name in ("running_sequences", "waiting_sequences", "kv_blocks_used")
        )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert values[f"gateway_local_engine_kv_blocks_total{label}"] > 0
    assert values[f"gateway_local_engine_running_sequences{label}"] == 0
    assert values[f"gateway_local_engine_waiting_sequences{label}"] == 0
    assert values[f"gateway_local_engine_kv_blocks_used{label}"] == 0
    assert values[f"gateway_local_engine_prompt_tokens_total{label}"] > 0
    assert values[f"gateway_local_engine_generation_tokens_total{label}"] > 0
    assert values[f"gateway_local_engine_prefix_cache_queried_tokens_total{label}"] > 0
    # the same question asked again: its prompt came from the prefix cache
    assert values[f"gateway_local_engine_prefix_cache_hit_tokens_total{label}"] > 0
    assert 0 < values[f"gateway_local_engine_prefix_cache_hit_rate{label}"] <= 1
    assert values[f"gateway_local_engine_time_to_first_token_seconds_count{label}"] > 0
    assert values[f"gateway_local_engine_inter_token_latency_seconds_count{label}"] > 0
    assert f"gateway_local_engine_tokens_per_second{label}" in values
    assert values[f"gateway_local_engine_preemptions_total{label}"] == 0


def test_sampling_options_in_process(tiny_gateway: ServerThread) -> None:
    with _client(tiny_gateway) as client:
        kw: dict[str, Any] = dict(
            model="tiny",
            messages=[{"role": "user", "content": "the quick fox"}],
            max_tokens=6,
            temperature=1.0,
            seed=7,
        )
        raw = client.chat.completions.with_raw_response.create(n=2, logprobs=True, top_logprobs=2, **kw)
        validate("CreateChatCompletionResponse", raw.http_response.json())
        many = raw.parse()
        again = client.chat.completions.create(n=2, **kw)
        completion = client.completions.with_raw_response.create(
            model="tiny", prompt="the quick", max_tokens=5, temperature=0, logprobs=1
        )
        streamed = list(
            client.completions.create(
                model="tiny", prompt="the quick", max_tokens=5, temperature=0, stream=True
            )
        )
        with pytest.raises(openai.BadRequestError) as echo:
            client.completions.create(model="tiny", prompt="the quick", max_tokens=5, echo=True)
        with pytest.raises(openai.BadRequestError) as json_mode:
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "x"}], response_format={"type": "yaml"}
            )  # type: ignore[call-overload]
    assert (echo.value.param, echo.value.code) == ("echo", "unsupported_parameter")
    assert json_mode.value.param == "response_format"
    assert [c.index for c in many.choices] == [0, 1]
    assert [c.message.content for c in many.choices] == [c.message.content for c in again.choices]  # seeded
    assert many.usage is not None and many.usage.completion_tokens == sum(
        len(c.logprobs.content or []) for c in many.choices if c.logprobs
    )
    assert all(
        c.logprobs and len(c.logprobs.content[0].top_logprobs) == 2
        for c in many.choices
        if c.logprobs and c.logprobs.content
    )
    validate("CreateCompletionResponse", completion.http_response.json())
    text = completion.parse().choices[0].text
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    assert completion.parse().choices[0].logprobs is not None


def test_stop_strings_are_honoured(tiny_gateway: ServerThread) -> None:
    with _client(tiny_gateway) as client:
        full = client.completions.create(model="tiny", prompt="the quick", max_tokens=12, temperature=0)
        text = full.choices[0].text
        assert len(text) > 4
        stop = text[2:4]
        cut = client.completions.create(
            model="tiny", prompt="the quick", max_tokens=12, temperature=0, stop=stop
        )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


async def test_a_request_before_the_model_is_loaded_waits_or_gets_503(tiny_model: Path) -> None:
    config = {"provider": "local", "model": "tiny", "model_path": str(tiny_model)}
    impatient = LocalBackend(DeploymentConfig.model_validate({**config, "engine": {"load_timeout_s": 0}}))
    # Patient enough for a loaded machine: the point is that it waits rather than 503s.
    patient = LocalBackend(DeploymentConfig.model_validate({**config, "engine": {"load_timeout_s": 300}}))
    payload = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "ignore_eos": True,
    }
    try:
        await impatient.start()
        await patient.start()
        assert not impatient.ready and not patient.ready
        with pytest.raises(Unavailable) as loading:
            async with impatient.send(Endpoint.CHAT, dict(payload), stream=False):
                pass
        assert loading.value.status == 503 and loading.value.code == "model_loading"
        assert loading.value.headers["retry-after"]
        async with patient.send(Endpoint.CHAT, dict(payload), stream=False) as answer:
            assert answer.data is not None and answer.data["usage"]["completion_tokens"] == 2
        assert patient.ready
    finally:
        await asyncio.gather(impatient.close(), patient.close())


def _start_held(tiny_model: Path, tmp_path: Path, *settings: str) -> tuple[ServerThread, Path, str]:
    """A gateway whose deployment ``local/slow`` (the tiny model plus ``settings``) is loading: its
    tokenizer_config.json is a pipe, and the load waits until the test writes the returned text into it."""
    slow = tmp_path / "slow"
    shutil.copytree(tiny_model, slow)
    pipe = slow / "tokenizer_config.json"
    text = pipe.read_text()
    pipe.unlink()
    os.mkfifo(pipe)
    lines = "".join(f"        {line}\n" for line in settings)
    server = _start(f"""
  - name: slow
    deployments:
      - provider: local
        model: slow
        model_path: {slow}
{lines}""")
    return server, pipe, text


def _assert_loading(server: ServerThread) -> None:
    starting = httpx.get(server.url + "/readyz")
    assert starting.status_code == 503
    assert starting.json()["status"] == "starting" and starting.json()["deployments"]["loading"] == [
        "local/slow"
    ]


def _unblock(pipe: Path) -> None:
    # Let the load fail rather than hang the shutdown: close the pipe on its reader once it has one.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError:  # ENXIO: the loader has not opened it yet
            time.sleep(0.05)


def test_readyz_says_starting_until_the_model_is_loaded(tiny_model: Path, tmp_path: Path) -> None:
    server, pipe, text = _start_held(
        tiny_model, tmp_path, "engine: {load_timeout_s: 0.2, block_size: 4, num_kv_blocks: 64}"
    )
    written = False
    try:
        _assert_loading(server)
        chat = {
            "model": "slow",
            "messages": [{"role": "user", "content": "the quick fox"}],
            "max_tokens": 3,
            "ignore_eos": True,
        }
        early = httpx.post(
            server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=chat
        )
        assert early.status_code == 503 and early.json()["error"]["code"] == "model_loading"
        assert early.headers["retry-after"] == "5"
        with pipe.open("w") as f:
            f.write(text)
        written = True
        assert _wait_ready(server, timeout=60)["status"] == "ready"
        late = httpx.post(
            server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json=chat,
            timeout=60,
        )
        assert late.status_code == 200 and late.json()["usage"]["completion_tokens"] == 3
    finally:
        if not written:
            _unblock(pipe)
        server.stop()


def test_a_capped_local_deployment_is_loading_until_loaded_and_its_cap_holds(
    tiny_model: Path, tmp_path: Path
) -> None:
    # max_concurrency must not hide the engine's readiness: /readyz lists it as loading until it is loaded.
    server, pipe, text = _start_held(
        tiny_model,
        tmp_path,
        "max_concurrency: 1",
        "timeouts: {connect_s: 0.5}",
        "engine: {load_timeout_s: 60, block_size: 4, num_kv_blocks: 64}",
    )
    written = False
    try:
        _backend(server)  # the engine's own backend, not a wrapper that hides its state
        _assert_loading(server)
        chat = {
            "model": "slow",
            "messages": [{"role": "user", "content": "the quick fox"}],
            "max_tokens": 3,
            "ignore_eos": True,
        }
        answers: list[httpx.Response] = []

        def ask() -> None:
            answers.append(
                httpx.post(
                    server.url + "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {KEY}"},
                    json=chat,
                    timeout=90,
                )
            )

        # Both wait for the model; one holds the only slot while it waits, the other is refused after connect_s.
        askers = [threading.Thread(target=ask) for _ in range(2)]
        for asker in askers:
            asker.start()
        deadline = time.monotonic() + 30
        while not answers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [a.status_code for a in answers] == [429]
        assert answers[0].json()["error"]["code"] == "deployment_busy"
        _assert_loading(server)
        with pipe.open("w") as f:
            f.write(text)
        written = True
        for asker in askers:
            asker.join(90)
        assert answers[1].status_code == 200 and answers[1].json()["usage"]["completion_tokens"] == 3
        assert _wait_ready(server, timeout=60)["status"] == "ready"
    finally:
        if not written:
            _unblock(pipe)
        server.stop()


def test_a_model_that_fails_to_load_answers_503_and_readyz_says_why(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    server = _start(f"""
  - name: broken
    deployments:
      - provider: local
        model: broken
        model_path: {broken}
""")
    try:
        ready = _wait_ready(server, timeout=60)
        assert ready["status"] == "ready"
        assert [f["deployment"] for f in ready["deployments"]["failed"]] == ["local/broken"]
        response = httpx.post(
            server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "broken", "messages": QUESTION},
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_unavailable"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def engine_server(tiny_model: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_engine",
            "serve",
            "--model",
            str(tiny_model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--block-size",
            "4",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stderr:
            process.stderr.close()


def test_over_http_a_local_engine_server_is_the_upstream(engine_server: str) -> None:
    server = _start(f"""
  - name: remote
    deployments:
      - provider: local
        model: tiny-llama
        api_base: {engine_server}/v1
""")
    try:
        assert _wait_ready(server)["status"] == "ready"
        with _client(server) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="remote",
                messages=[{"role": "user", "content": "the quick fox"}],
                max_tokens=5,
                temperature=0,
            )
            streamed = list(
                client.chat.completions.create(
                    model="remote",
                    messages=[{"role": "user", "content": "the quick fox"}],
                    max_tokens=5,
                    temperature=0,
                    stream=True,
                )
            )
            with pytest.raises(openai.BadRequestError) as bad:
                client.chat.completions.create(
                    model="remote", messages=[{"role": "user", "content": "x"}], top_logprobs=2
                )
            with pytest.raises(openai.BadRequestError) as tools:
                client.chat.completions.create(
                    model="remote",
                    messages=[{"role": "user", "content": "x"}],
                    tools=[{"type": "function", "function": {"name": "f"}}],
                    tool_choice="required",
                    response_format={"type": "yaml"},
                )  # type: ignore[call-overload]
        validate("CreateChatCompletionResponse", raw.http_response.json())
        answer = raw.parse()
        assert answer.usage is not None and answer.usage.completion_tokens == 5
        assert raw.http_response.headers["x-gateway-deployment"] == "local/tiny-llama"
        assert (
            "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            == answer.choices[0].message.content
        )
        assert all(c.usage is None for c in streamed)  # asked upstream for counting, dropped for this client
        assert bad.value.param == "top_logprobs"
        assert tools.value.param == "response_format"  # the server's error, passed on
        assert not isinstance(server.app[GATEWAY].backends[0], LocalBackend)  # type: ignore[index]
    finally:
        server.stop()


def test_config_of_the_local_provider(tmp_path: Path) -> None:
    shipped = load_config(ROOT / "config.yaml", env={})
    first = shipped.config.models[0]
    assert first.name == "smollm2" and first.deployments[0].in_process
    assert ("smollm2", 0) not in shipped.disabled
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(ROOT / "config.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and "OK" in check.stdout

    def problems(deployment: str) -> list[str]:
        with pytest.raises(ConfigError) as error:
            parse_config(f"models:\n  - name: x\n    deployments: [{deployment}]\n", env={})
        return error.value.problems

    assert problems(f"{{provider: local, model: m, model_path: {tmp_path}/absent.gguf}}") == [
        f"models[0].deployments[0].model_path: {tmp_path}/absent.gguf does not exist"
    ]
    assert problems("{provider: local, model: m, engine: {block_size: 12}}") == [
        "models[0].deployments[0].engine.block_size: must be a power of two"
    ]
    assert problems("{provider: local, model: m, engine: {dtype: int8}}")[0].startswith(
        "models[0].deployments[0].engine.dtype:"
    )
    assert any(
        "apply only to provider 'local' without api_base" in p
        for p in problems(
            "{provider: local, model: m, api_base: 'http://127.0.0.1:1/v1', engine: {max_num_seqs: 2}}"
        )
    )
    (tmp_path / "config.json").write_text("{}")
    assert any("apply only" in p for p in problems(f"{{provider: openai, model: m, model_path: {tmp_path}}}"))


def test_a_gateway_without_a_local_deployment_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from gateway.app import build_app\n"
        "from gateway.config import load_config\n"
        f"loaded = load_config({str(ROOT / 'config.yaml')!r}, env={{}})\n"
        "build_app(loaded)\n"
        "assert 'torch' not in sys.modules, 'torch imported before start-up'\n"
        "from gateway.config import parse_config\n"
        "cfg = 'models:\\n  - name: c\\n    deployments: [{provider: openai, model: m, api_key: k}]\\n'\n"
        "build_app(parse_config(cfg, env={}))\n"
        "import backends.local\n"
        "assert 'torch' not in sys.modules and 'local_engine' not in sys.modules\n"
        "print('no torch')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "no torch"  # after any start-up warnings


def test_readme_quick_start_answers_from_the_shipped_config() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        # No wait for /readyz: a request that comes while the model loads waits for it.
        script = quick_start.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{port}")
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        models, answer = result.stdout.splitlines()[:2]
        assert models == "['smollm2']"
        assert "Paris" in answer
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
