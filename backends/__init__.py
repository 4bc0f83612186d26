"""Upstream adapters: one module per wire format, one interface (``Backend``)."""

import time
from typing import Any

from .anthropic import AnthropicBackend
from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig
from .gemini import GeminiBackend
from .openai import OpenAIBackend
from .pool import SessionPool

__all__ = [
    "AnthropicBackend",
    "Backend",
    "BedrockBackend",
    "DeploymentConfig",
    "Endpoint",
    "GeminiBackend",
    "OpenAIBackend",
    "SessionPool",
    "UpstreamResponse",
    "build_backend",
]

_NATIVE: dict[str, type[Backend]] = {"anthropic": AnthropicBackend, "gemini": GeminiBackend}


def build_backend(deployment: DeploymentConfig, pool: SessionPool, clock: Any = None) -> Backend:
    """The adapter for a deployment's provider; ``clock`` (``policies.clock.Clock``) times engine workers' idleness."""
    if deployment.in_process and deployment.engine is not None and deployment.engine.workers is not None:
        from .workers import WorkerPool

        return WorkerPool(deployment, pool, clock or _MONOTONIC)
    if deployment.in_process:
        from .local import LocalBackend  # imports no torch until the backend starts

        return LocalBackend(deployment)
    if deployment.provider == "bedrock":
        from .bedrock import BedrockBackend  # botocore (~10 MB) only for gateways that use Bedrock

        return BedrockBackend(deployment, pool)
    native = _NATIVE.get(deployment.provider)
    if native is not None:
        return native(deployment, pool)  # type: ignore[call-arg]
    return OpenAIBackend(deployment, pool)


class _Monotonic:
    @staticmethod
    def monotonic() -> float:
        return time.monotonic()


_MONOTONIC = _Monotonic()


def __getattr__(name: str) -> Any:
    if name == "BedrockBackend":
        from .bedrock import BedrockBackend

        return BedrockBackend
    raise AttributeError(f"module 'backends' has no attribute {name!r}")
