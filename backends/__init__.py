"""Upstream adapters: one module per wire format, one interface (``Backend``)."""

from .anthropic import AnthropicBackend
from .base import Backend, Endpoint, UpstreamResponse
from .bedrock import BedrockBackend
from .config import DeploymentConfig
from .gemini import GeminiBackend
from .openai import OpenAIBackend
from .pool import SessionPool

__all__ = ["AnthropicBackend", "Backend", "BedrockBackend", "DeploymentConfig", "Endpoint", "GeminiBackend",
           "OpenAIBackend", "SessionPool", "UpstreamResponse", "build_backend"]

_NATIVE: dict[str, type[Backend]] = {"anthropic": AnthropicBackend, "gemini": GeminiBackend,
                                     "bedrock": BedrockBackend}


def build_backend(deployment: DeploymentConfig, pool: SessionPool) -> Backend:
    """The adapter for a deployment's provider."""
    if deployment.in_process:
        from .local import LocalBackend  # imports no torch until the backend starts

        return LocalBackend(deployment)
    native = _NATIVE.get(deployment.provider)
    if native is not None:
        return native(deployment, pool)  # type: ignore[call-arg]
    return OpenAIBackend(deployment, pool)
