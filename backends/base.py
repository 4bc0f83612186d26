"""The one interface every upstream adapter implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Endpoint(StrEnum):
    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    # native formats: carried unchanged to a deployment that speaks them (gateway/messages.py, responses.py)
    RESPONSES = "responses"
    MESSAGES = "messages"
    COUNT_TOKENS = "messages/count_tokens"


@dataclass(slots=True)
class UpstreamResponse:
    """A successful upstream answer: a whole OpenAI-shaped JSON body (raw and parsed), or a stream.

    ``chunks`` yields bytes already in OpenAI's SSE format (``data: {...}\\n\\n`` … ``data: [DONE]``),
    in whatever pieces they arrived: the gateway relays them as they come.
    """

    status: int
    body: bytes | None = None
    data: dict[str, Any] | None = None
    chunks: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """An upstream deployment. Knows one wire format; never knows about tenants."""

    id: str

    @property
    def ready(self) -> bool:
        """False while the backend still acquires what it needs after ``start`` (a local model loading)."""
        return True

    @property
    def starting(self) -> bool:
        """True while the backend starts capacity on demand yet serves (an engine worker starting)."""
        return False

    @property
    def failure(self) -> str | None:
        """Why the backend cannot serve at all (a local model that failed to load); None when it can."""
        return None

    @property
    def batch_window(self) -> int | None:
        """How many batch lines to keep in flight to this backend at once, where it runs them together (an
        engine's sequences); None: no preference, the batch runner's own ``batches.concurrency`` applies."""
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire what the backend needs (pooled clients, engines) at gateway start-up."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release it at shutdown."""

    @abc.abstractmethod
    def send(
        self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send one request; the context holds the upstream connection until it exits.

        ``payload`` is the client's OpenAI-shaped request; the backend sets the upstream model.
        Raises ``UpstreamError`` (and subclasses) for anything but success.
        """
