"""Which values of a config are secrets (registered with ``errors.secrets`` so no output can carry them)."""

from __future__ import annotations

from errors import secrets

from ..config import GatewayConfig


def register(config: GatewayConfig) -> None:
    """Every credential the config holds: deployment keys, AWS credentials, upstream header values (often an
    auth token), the trace exporter's headers. Called whenever a config is built, reloads included."""
    values: list[str | None] = list(config.tracing.headers.values())
    for alias in config.models:
        for deployment in alias.deployments:
            values += [deployment.api_key, deployment.aws_secret_access_key, deployment.aws_session_token,
                       *deployment.headers.values()]
            if deployment.proxy is not None and "@" in deployment.proxy:  # user:password@ in the proxy URL
                values.append(deployment.proxy)
    secrets.register(values)
