"""Reloading config.yaml without a restart: SIGHUP (forwarded by the supervisor to every worker) and, with
``server.watch_config``, a change of the file. Real ``python -m gateway serve`` processes, the real SDK."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import fields

import httpx
import openai
import pytest

from gateway.app import build_app
from gateway.auth import hash_key, new_key
from gateway.config import parse_config
from gateway.keys import GATEWAY
from gateway.reload import Reloader
from gateway.state import Gateway
from policies.stores import StoreLayer
from tests.conftest import KEY, UPSTREAM_KEY, config_text, failure_models
from tests.gateway.test_server import log_lines, start_serve_with
from tests.harness import ServerThread
from tests.wait import wait_for as wait_until

NEW_KEY = new_key()


def original(upstream_url: str, server: str = "") -> str:
    return config_text(upstream_url, failure_models(upstream_url), server=server)


def extended(upstream_url: str, server: str = "") -> str:
    """The original plus an alias ``fresh`` (open to acme) and a tenant ``initech`` with NEW_KEY."""
    alias = f"""  - name: fresh
    deployments:
      - provider: openai-compatible
        model: fresh-upstream-model
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}"""
    text = config_text(upstream_url, failure_models(upstream_url) + "\n" + alias, server=server)
    return (
        text
        + f"""  - name: initech
    keys: ["{hash_key(NEW_KEY)}"]
    models: ["fresh"]
"""
    )


def write(path, text: str) -> None:
    # As config managers do: a new file renamed onto the old one, never a half-written file.
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def start(tmp_path, text: str, *, workers: int = 1):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    stdout = tmp_path / "stdout.log"
    process, url = start_serve_with(config, {}, workers=workers, stdout=stdout)
    return process, url, config, stdout


def stop(process) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def wait_for(stdout, event: str, count: int = 1, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in log_lines(stdout) if line.get("event") == event]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {count} {event!r} log lines in {timeout}s:\n{stdout.read_text()}")


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def ask(url: str, key: str, model: str) -> str | None:
    with client(url, key) as sdk:
        return (
            sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            .choices[0]
            .message.content
        )


def test_sighup_adds_an_alias_and_a_tenant_key_without_a_restart(tmp_path, upstream):
    url_up, state = upstream[0].url, upstream[1]
    process, url, config, stdout = start(tmp_path, original(url_up))
    try:
        with pytest.raises(openai.AuthenticationError):
            ask(url, NEW_KEY, "fresh")
        with client(url, KEY) as sdk:
            assert "fresh" not in {m.id for m in sdk.models.list()}

        write(config, extended(url_up, server="  drain_timeout_s: 5"))
        process.send_signal(signal.SIGHUP)
        reloaded = wait_for(stdout, "config reloaded")[0]

        assert reloaded["pid"] == process.pid and reloaded["models"] == 6 and reloaded["tenants"] == 3
        assert ask(url, NEW_KEY, "fresh")
        assert state.requests[-1].body["model"] == "fresh-upstream-model"
        with client(url, NEW_KEY) as sdk:
            assert [m.id for m in sdk.models.list()] == ["fresh"]
            with pytest.raises(openai.NotFoundError):  # initech may use only its own alias
                sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        with client(url, KEY) as sdk:
            assert "fresh" in {m.id for m in sdk.models.list()}
        assert ask(url, KEY, "chat")  # the old key and alias still work
        assert httpx.get(url + "/readyz").json()["status"] == "ready"
        warning = wait_for(stdout, "config reload: these fields take effect only after a restart")[0]
        assert warning["fields"] == ["server.drain_timeout_s"]
        wait_for(stdout, "previous config closed")
    finally:
        stop(process)
    assert NEW_KEY not in stdout.read_text() and UPSTREAM_KEY not in stdout.read_text()


def test_an_invalid_file_keeps_the_old_config_and_logs_the_problems(tmp_path, upstream):
    process, url, config, stdout = start(tmp_path, original(upstream[0].url))
    try:
        write(
            config, original(upstream[0].url, server="  workers: 0").replace("api_base: ", "api_base: x", 1)
        )
        process.send_signal(signal.SIGHUP)
        failed = wait_for(stdout, "config reload failed; keeping the old config")[0]

        problems = failed["problems"]
        assert any(p.startswith("models[0].deployments[0].api_base:") for p in problems), problems
        assert any(p.startswith("server.workers:") for p in problems), problems
        assert failed["config"] == str(config)
        assert ask(url, KEY, "chat")  # still served by the old config
        assert httpx.get(url + "/readyz").status_code == 200
        assert not [line for line in log_lines(stdout) if line["event"] == "config reloaded"]

        write(config, extended(upstream[0].url))  # fixed: the next SIGHUP takes it
        process.send_signal(signal.SIGHUP)
        wait_for(stdout, "config reloaded")
        assert ask(url, NEW_KEY, "fresh")
    finally:
        stop(process)


def test_a_stream_in_flight_across_a_reload_finishes_normally(tmp_path, upstream):
    process, url, config, stdout = start(tmp_path, original(upstream[0].url))
    received: list[str] = []
    finished: list[float] = []

    def consume() -> None:
        with client(url, KEY) as sdk:
            for chunk in sdk.chat.completions.create(
                model="slow", stream=True, messages=[{"role": "user", "content": "x"}]
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
        finished.append(time.monotonic())

    reader = threading.Thread(target=consume)
    try:
        reader.start()
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:  # the stream is under way
            time.sleep(0.02)
        assert received
        write(config, extended(upstream[0].url))
        process.send_signal(signal.SIGHUP)
        wait_for(stdout, "config reloaded")
        assert ask(url, NEW_KEY, "fresh")  # new requests use the new config while the stream runs
        assert not finished
        reader.join(timeout=20)
        assert len(received) == 10  # every chunk of the stream arrived
        # The replaced config's connections were closed only after the stream that used them ended.
        closed = wait_for(stdout, "previous config closed")
        assert len(closed) == 1
    finally:
        reader.join(timeout=20)
        stop(process)


def test_sighup_to_the_supervisor_reloads_every_worker(tmp_path, upstream):
    process, url, config, stdout = start(tmp_path, original(upstream[0].url), workers=2)
    try:
        write(config, extended(upstream[0].url))
        process.send_signal(signal.SIGHUP)
        reloaded = wait_for(stdout, "config reloaded", count=2)
        workers = next(line for line in log_lines(stdout) if line["event"] == "supervising")["workers"]
        assert sorted(line["pid"] for line in reloaded) == sorted(workers)
        for _ in range(12):  # a new connection each time: the kernel spreads them over both workers
            assert ask(url, NEW_KEY, "fresh")
    finally:
        stop(process)


def test_watch_config_reloads_when_the_file_changes(tmp_path, upstream):
    watch = "  watch_config: true"
    process, url, config, stdout = start(tmp_path, original(upstream[0].url, server=watch))
    try:
        write(config, extended(upstream[0].url, server=watch))
        wait_for(stdout, "config reloaded", timeout=10)
        assert ask(url, NEW_KEY, "fresh")
        assert len([line for line in log_lines(stdout) if line["event"] == "config reloaded"]) == 1
    finally:
        stop(process)


class WatchTicks:
    """The watcher's sleeps, each held until the test lets it go: the test knows how many looks it took."""

    def __init__(self) -> None:
        self.started = 0
        self._go: asyncio.Semaphore | None = None

    async def sleep(self, seconds: float) -> None:
        del seconds
        if self._go is None:
            self._go = asyncio.Semaphore(0)
        self.started += 1
        await self._go.acquire()

    def let_go(self, server: ServerThread, count: int) -> None:
        """Lets ``count`` sleeps end and waits until the watcher has looked and sleeps again."""
        target = self.started + count
        for _ in range(count):
            server.loop.call_soon_threadsafe(lambda: self._go.release() if self._go else None)
        wait_until(lambda: self.started >= target, what=f"{count} more watch ticks")


def test_the_watcher_reloads_a_changed_file_once(tmp_path, upstream) -> None:
    """Counted ticks instead of wall-clock time: one reload for a change, none for the ticks after it."""
    watch = "  watch_config: true"
    path = tmp_path / "config.yaml"
    path.write_text(original(upstream[0].url, server=watch))
    loaded = parse_config(path.read_text(), path=str(path), env={})
    server = ServerThread(lambda: build_app(loaded)).start()
    ticks = WatchTicks()
    try:
        app = server.app
        assert app is not None
        reloader = Reloader(app, str(path), sleep=ticks.sleep)
        server.call(reloader.start)
        wait_until(lambda: ticks.started == 1, what="the watcher's first sleep")
        first = app[GATEWAY].loaded  # the live gateway adopts a reloaded config's fields
        ticks.let_go(server, 3)  # unchanged: nothing to reload
        assert app[GATEWAY].loaded is first
        write(path, extended(upstream[0].url, server=watch))
        ticks.let_go(server, 2)  # a look that sees the change, then its settling wait
        reloaded = wait_until(
            lambda: app[GATEWAY].loaded if app[GATEWAY].loaded is not first else None, what="the reload"
        )
        ticks.let_go(server, 5)  # five more looks at the unchanged file
        assert app[GATEWAY].loaded is reloaded
        asyncio.run_coroutine_threadsafe(reloader.close(), server.loop).result(30)
    finally:
        server.stop()


def test_a_deployment_that_would_stop_working_keeps_the_old_config(tmp_path, upstream):
    local = """  - name: tiny
    deployments:
      - provider: local
        name: local-tiny
        model: SmolLM2-135M-Instruct
        engine: {max_num_seqs: 2, kv_cache_gib: 0.05, max_model_len: 256}
"""
    process, url, config, stdout = start(tmp_path, config_text(upstream[0].url, local))
    try:
        deadline = time.monotonic() + 60
        while httpx.get(url + "/readyz").json()["deployments"]["loading"] and time.monotonic() < deadline:
            time.sleep(0.2)
        garbage = tmp_path / "broken.gguf"
        garbage.write_bytes(b"not a model")
        broken = local.replace(
            "        model: SmolLM2", f"        model_path: {garbage}\n        model: SmolLM2"
        )
        # ... and a variable that is not set: the rejected config would have disabled alias chat.
        write(config, config_text(upstream[0].url, broken).replace(UPSTREAM_KEY, "${RELOAD_TEST_UNSET}", 1))
        process.send_signal(signal.SIGHUP)
        failed = wait_for(stdout, "config reload failed; keeping the old config")[0]

        assert len(failed["problems"]) == 1 and failed["problems"][0].startswith("deployment local-tiny: ")
        ready = httpx.get(url + "/readyz").json()
        assert ready["status"] == "ready" and ready["deployments"]["failed"] == []
        assert ready["deployments"]["disabled"] == []
        assert (
            'gateway_deployment_enabled{alias="chat",deployment="openai-compatible/fake-model"} 1.0'
            in httpx.get(url + "/metrics").text
        )
        with client(url, KEY) as sdk:
            answer = sdk.chat.completions.create(
                model="tiny", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
            )
        assert answer.choices[0].message.content is not None
    finally:
        stop(process)


async def test_adopt_moves_every_field_and_keeps_the_process_draining(upstream):
    stores = StoreLayer()  # the app's: a reload keeps it
    live = Gateway.build(parse_config(original(upstream[0].url)), stores)
    fresh = Gateway.build(parse_config(extended(upstream[0].url)), stores)
    await live.start()
    await fresh.start()
    before = {f.name: getattr(live, f.name) for f in fields(Gateway)}
    live.draining = True  # SIGTERM came: a reload must not make /readyz say ready again
    old = live.adopt(fresh)
    try:
        for f in fields(Gateway):
            if f.name != "draining":
                assert getattr(live, f.name) is getattr(fresh, f.name), f.name
                assert getattr(old, f.name) is before[f.name], f.name
        assert live.draining and live.ready and "fresh" in live.router
    finally:
        await old.close()
        await live.close()
    assert not old.ready and before["pipeline"] is old.pipeline
