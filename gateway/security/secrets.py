"""Which values of a config are secrets (registered with ``errors.secrets`` so no output can carry them)."""

from __future__ import annotations

from urllib.parse import urlsplit

from errors import secrets

from ..config import GatewayConfig


def register(config: GatewayConfig) -> None:
    """Every credential the config holds: deployment keys, AWS credentials, upstream header values (often an
    auth token), the trace exporter's headers, the passwords in the Redis URL and the request log's
    PostgreSQL DSN. Called whenever a config is built, reloads included."""
    values: list[str | None] = list(config.tracing.headers.values())
    for alias in config.models:
        for deployment in alias.deployments:
            values += [
                deployment.api_key,
                deployment.aws_secret_access_key,
                deployment.aws_session_token,
                *deployment.headers.values(),
            ]
            if deployment.proxy is not None and "@" in deployment.proxy:  # user:password@ in the proxy URL
                values.append(deployment.proxy)
    for url in (config.stores.redis_url, config.request_log.dsn):
        values.append(_password(url))
    secrets.register(values)


def _password(url: str | None) -> str | None:
    """The password of a ``scheme://user:password@host`` URL (None when it has none)."""
    if not url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:  # not a URL: the config check says so
        return None
