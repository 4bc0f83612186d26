"""Fixtures: the fake provider servers on loopback, and a gateway in front of them with one alias per
provider and failure (``anthropic``, ``anthropic-429``, …) next to conftest's OpenAI-format aliases."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from policies.clock import ManualClock
from tests.conftest import LOG_PATH, UPSTREAM_KEY, config_text
from tests.harness import ServerThread
from tests.wait import wait_for

from . import anthropic_upstream, bedrock_upstream, gemini_upstream
from .openai_upstream import FakeState

PROVIDERS = ("anthropic", "gemini", "bedrock")
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"


@dataclass
class Fake:
    server: ServerThread
    state: FakeState

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class Fakes:
    anthropic: Fake
    gemini: Fake
    bedrock: Fake
    aws: bedrock_upstream.Aws

    def __getitem__(self, provider: str) -> Fake:
        return getattr(self, provider)


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    states = {p: FakeState(api_key=UPSTREAM_KEY) for p in PROVIDERS}
    aws = bedrock_upstream.Aws()
    servers = {
        "anthropic": ServerThread(lambda: anthropic_upstream.build_app(states["anthropic"])).start(),
        "gemini": ServerThread(lambda: gemini_upstream.build_app(states["gemini"])).start(),
        "bedrock": ServerThread(lambda: bedrock_upstream.build_app(states["bedrock"], aws)).start(),
    }
    yield Fakes(
        anthropic=Fake(servers["anthropic"], states["anthropic"]),
        gemini=Fake(servers["gemini"], states["gemini"]),
        bedrock=Fake(servers["bedrock"], states["bedrock"]),
        aws=aws,
    )
    for server in servers.values():
        server.stop()


def deployment(provider: str, fakes: Fakes, model: str) -> str:
    if provider == "anthropic":
        return f"""provider: anthropic
        model: {model}
        api_base: {fakes.anthropic.url}/v1
        api_key: {UPSTREAM_KEY}"""
    if provider == "gemini":
        return f"""provider: gemini
        model: {model}
        api_base: {fakes.gemini.url}/v1beta
        api_key: {UPSTREAM_KEY}"""
    return f"""provider: bedrock
        model: "{model}"
        api_base: {fakes.bedrock.url}"""


def provider_models(fakes: Fakes) -> str:
    """Aliases ``<provider>`` (a working model) and ``<provider>-<failure>`` for each provider."""
    normal = {
        "anthropic": "claude-3-5-sonnet-20241022",
        "gemini": "gemini-2.0-flash",
        "bedrock": BEDROCK_MODEL,
    }
    lines = []
    for provider in PROVIDERS:
        for suffix, model in (
            ("", normal[provider]),
            ("-429", "error-429"),
            ("-529", "error-529"),
            ("-503", "error-503"),
            ("-400", "error-400"),
            ("-stream-error", "stream-error"),
            ("-cut", "cut-stream"),
            ("-early-error", "early-error"),
            ("-blocked", "blocked"),
            ("-unsafe", "unsafe"),
        ):
            lines.append(f"""  - name: {provider}{suffix}
    deployments:
      - {deployment(provider, fakes, model)}""")
    return "\n".join(lines)


def openai_failures(upstream_url: str) -> str:
    """``chat-429`` and ``chat-cut``: failures of conftest's OpenAI-format fake."""
    return "\n".join(
        f"""  - name: chat-{suffix}
    deployments:
      - provider: openai-compatible
        model: {model}
        api_base: {upstream_url}/v1
        api_key: {UPSTREAM_KEY}"""
        for suffix, model in (("429", "error-429"), ("cut", "cut-stream"))
    )


@pytest.fixture
def gateway_clock() -> ManualClock:
    """The provider gateway's clock: its retries wait on it, so a ``Retry-After`` of 7 s takes no time and
    is asserted from ``slept``."""
    return ManualClock()


@pytest.fixture
def provider_gateway(
    fakes: Fakes,
    upstream,
    start_gateway: Callable[..., ServerThread],
    monkeypatch: pytest.MonkeyPatch,
    gateway_clock: ManualClock,
) -> ServerThread:
    # Bedrock's credentials and region come from botocore's usual environment variables.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", bedrock_upstream.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bedrock_upstream.SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", bedrock_upstream.REGION)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return start_gateway(
        config_text(upstream[0].url, provider_models(fakes) + "\n" + openai_failures(upstream[0].url)),
        clock=gateway_clock,
    )


def logged(request_id: str) -> dict[str, Any]:
    """The gateway's log line for a request (written just after its last byte went out)."""
    lines = wait_for(
        lambda: [json.loads(line) for line in LOG_PATH.read_text().splitlines() if request_id in line],
        what=f"the log line of {request_id}",
    )
    return lines[-1]
