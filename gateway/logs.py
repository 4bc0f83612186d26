"""structlog, one JSON object per line on stdout; every line scrubbed of secrets and bounded in size."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog

from errors.secrets import scrub

MAX_FIELD_CHARS = 4096  # a traceback or an upstream message longer than this is cut, marked as cut
# Fields the gateway itself fills with names and ids: never a secret, and skipping them keeps the
# request line's cost flat.
_SAFE = frozenset(
    {
        "request_id",
        "tenant",
        "key_id",
        "alias",
        "deployment",
        "endpoint",
        "status",
        "stream",
        "latency_ms",
        "overhead_ms",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "attempts",
        "cache",
        "cost_usd",
        "saved_usd",
        "trace_id",
        "level",
        "timestamp",
        "event",
    }
)


def bounded(text: str) -> str:
    """``text`` scrubbed of secrets and cut to ``MAX_FIELD_CHARS``."""
    text = scrub(text)
    if len(text) > MAX_FIELD_CHARS:
        return f"{text[:MAX_FIELD_CHARS]}... [{len(text) - MAX_FIELD_CHARS} more characters cut]"
    return text


def _guard(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name, value in event.items():
        if name in _SAFE or value is None or isinstance(value, (int, float, bool)):
            continue
        if not isinstance(value, str):  # a prompt or a list: bounded as its JSON text
            value = orjson.dumps(value, default=str).decode()
            if len(value) <= MAX_FIELD_CHARS and scrub(value) == value:
                continue
        event[name] = bounded(value)
    return event


def configure(level: int = logging.INFO, stream: BinaryIO | None = None) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _guard,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.BytesLoggerFactory(stream or sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    # aiohttp's own loggers (a malformed request line, a handler error) write whole header lines; they go
    # through the same guard.
    handler = logging.StreamHandler(_StructlogStream())
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("aiohttp.server", "aiohttp.access", "aiohttp.web"):
        aio = logging.getLogger(name)
        aio.handlers[:] = [handler]
        aio.propagate = False


class _StructlogStream:
    """A text stream for ``logging``: each record becomes one guarded structlog line."""

    def write(self, text: str) -> int:
        if text.strip():
            get_logger().warning("aiohttp", message=text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        pass


def get_logger() -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger("gateway")
