"""The real coding agents through the gateway: ``claude -p`` (Claude Code, ``/v1/messages``) and ``codex exec``
(Codex CLI, ``/v1/responses``), each in front of an OpenAI-format upstream that only speaks chat completions
and of an Anthropic-format upstream. The fakes' model ``agent`` (tests/fakes/scenario.py) first calls the
agent's shell tool to list the working directory; the agent runs it and sends the output back; the final
answer quotes it. Each run must exit 0 and print that answer, naming the file the test put there."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KEY, UPSTREAM_KEY, config_text
from tests.fakes import anthropic_upstream
from tests.fakes.openai_upstream import FakeState
from tests.harness import ServerThread

BIN = Path(__file__).resolve().parent / "node_modules" / ".bin"
MARKER = "marker-4711.txt"
RUN_S = 180  # an agent run's bound: a hung agent fails the test instead of the suite


@pytest.fixture
def agent_gateway(upstream, start_gateway) -> Iterator[ServerThread]:
    state = FakeState(api_key=UPSTREAM_KEY)
    anthropic = ServerThread(lambda: anthropic_upstream.build_app(state)).start()
    models = f"""  - name: agent-chat
    deployments:
      - provider: openai-compatible
        model: agent
        api_base: {upstream[0].url}/v1
        api_key: {UPSTREAM_KEY}
  - name: agent-anthropic
    deployments:
      - provider: anthropic
        model: agent
        api_base: {anthropic.url}/v1
        api_key: {UPSTREAM_KEY}"""
    yield start_gateway(config_text(upstream[0].url, models))
    anthropic.stop()


def _binary(name: str) -> Path:
    path = BIN / name
    assert path.exists(), f"{path} is missing: run `npm ci` in tests/agents (make setup does)"
    return path


def _run(argv: list[str], home: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "CODEX_"))}
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**clean, "HOME": str(home), "NO_COLOR": "1", **env},
        capture_output=True,
        text=True,
        timeout=RUN_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / MARKER).write_text("hello\n")
    (tmp_path / "home").mkdir()
    return work


@pytest.mark.parametrize("alias", ["agent-chat", "agent-anthropic"])
def test_claude_code_tool_loop(agent_gateway, workdir, alias):
    done = _run(
        [
            str(_binary("claude")),
            "-p",
            "List the files in this directory.",
            "--model",
            alias,
            "--allowedTools",
            "Bash",
        ],
        workdir.parent / "home",
        workdir,
        {
            "ANTHROPIC_BASE_URL": agent_gateway.url,
            "ANTHROPIC_API_KEY": KEY,
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Files:" in done.stdout and MARKER in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("alias", ["agent-chat", "agent-anthropic"])
def test_codex_tool_loop(agent_gateway, workdir, alias):
    home = workdir.parent / "home"
    (home / ".codex").mkdir()
    (home / ".codex" / "config.toml").write_text(f"""model = "{alias}"
model_provider = "gateway"

[model_providers.gateway]
name = "gateway"
base_url = "{agent_gateway.url}/v1"
wire_api = "responses"
env_key = "GATEWAY_KEY"
""")
    done = _run(
        [str(_binary("codex")), "exec", "--skip-git-repo-check", "List the files in this directory."],
        home,
        workdir,
        {"GATEWAY_KEY": KEY},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Files:" in done.stdout and MARKER in done.stdout, done.stdout + done.stderr
