"""Upstream adapters: one module per wire format, one interface (``Backend``)."""

from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig
from .openai import OpenAIBackend
from .pool import SessionPool

__all__ = ["Backend", "DeploymentConfig", "Endpoint", "OpenAIBackend", "SessionPool", "UpstreamResponse",
           "build_backend"]


def build_backend(deployment: DeploymentConfig, pool: SessionPool) -> Backend:
    """The adapter for a deployment's provider."""
    if deployment.in_process:
        from .local import LocalBackend  # imports no torch until the backend starts

        return LocalBackend(deployment)
    return OpenAIBackend(deployment, pool)
