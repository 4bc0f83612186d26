"""Tracing hooks that every layer may call: one span per stage of a request, when tracing is on.

``gateway/tracing.py`` sets ``CURRENT`` for the duration of each request when ``tracing.enabled`` is true.
Otherwise nothing sets it, ``start`` returns None after one context-variable read and ``end`` after one
comparison: the layers under the gateway never import OpenTelemetry.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

from .config import DeploymentConfig


class Spans(Protocol):
    """A request's trace (implemented by gateway/tracing.py)."""

    def start(self, name: str, deployment: DeploymentConfig | None, deployment_id: str | None) -> Any: ...
    def end(self, span: Any, status: int | None, error: str | None) -> None: ...
    def traceparent(self) -> str: ...
    def tracestate(self) -> str | None: ...


CURRENT: ContextVar[Spans | None] = ContextVar("gateway_spans", default=None)

Handle = tuple[Spans, Any]


def start(
    name: str, deployment: DeploymentConfig | None = None, deployment_id: str | None = None
) -> Handle | None:
    """Open a child span of the stage now open (or of the request's span); None when tracing is off."""
    spans = CURRENT.get()
    return None if spans is None else (spans, spans.start(name, deployment, deployment_id))


def end(handle: Handle | None, status: int | None = None, error: str | None = None) -> None:
    if handle is not None:
        handle[0].end(handle[1], status, error)


def traceparent() -> str | None:
    """The W3C ``traceparent`` to send upstream: this request's trace, parented on the open stage."""
    spans = CURRENT.get()
    return None if spans is None else spans.traceparent()


def tracestate() -> str | None:
    """The client's W3C ``tracestate`` (checked), sent upstream next to ``traceparent``."""
    spans = CURRENT.get()
    return None if spans is None else spans.tracestate()
