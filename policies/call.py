"""One request as the policies see it: who asks, for which alias, with what body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backends import Endpoint

from .cost import PriceTable
from .record import RequestRecord


@dataclass(slots=True)
class Call:
    """Built by the gateway after auth and validation; passed through every policy in order.

    ``body`` is the client's OpenAI-shaped request (chat-completions shape also for ``/v1/messages``,
    translated on the way in). ``headers`` are the client's request headers, for the per-request
    controls (priority, ``Cache-Control``, timeouts).
    """

    record: RequestRecord
    tenant: str
    key_id: str
    alias: str
    endpoint: Endpoint
    body: dict[str, Any]
    stream: bool
    headers: Mapping[str, str] = field(default_factory=dict)
    # set by the pipeline while the answer streams
    client_wants_usage: bool = False  # the client asked for stream_options.include_usage itself
    completed: bool = False  # the answer reached its normal end ([DONE] for streams)
    collected: list[bytes] | None = None  # the stream's events, kept when a policy (the cache) asked for them
    usage: dict[str, Any] | None = None
    batch: bool = False  # a line of a batch: priced at the deployment's batch price
    variant: str | None = None  # the alias's variant serving it (variants.py)
    deployments: frozenset[str] | None = None  # the variant's deployments: the only ones routed to
    prompt_tokens: int | None = None  # counted by the context policy (context.py); else resilience estimates
    price: PriceTable | None = None  # the variant's own price: replaces the deployment's in the ledger
    shadow: tuple[str, dict[str, Any]] | None = None  # (variant, the client's body) to mirror (shadow.py)
    chunks: Any = None  # embeddings split by the chunk context policy (context.py)
