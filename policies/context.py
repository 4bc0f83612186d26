"""Context-length policies: what happens to a chat prompt longer than its alias's context window.

``context.policy`` per alias, and per tenant (the tenant's replaces the alias's):

    fallback          (default) resilience skips deployments the prompt does not fit (by the count below)
                      and hands the request to a ``context_window`` fallback alias, else 400
    reject            400 ``context_length_exceeded`` at once, before admission; no fallback is tried
    truncate_oldest   drop the oldest turns until it fits; kept always: system/developer messages, the tool
                      definitions, everything from the last user message on, and an assistant's tool calls
                      together with their ``tool`` results (dropped together or kept together)
    truncate_middle   cut the middle out of the longest message(s), keeping head and tail and marking the cut
    chunk             embeddings: an input over the window is embedded in overlapping chunks whose vectors are
                      averaged (chunking.py); chat prompts are handled as by ``fallback``

The window is the smallest context window among the alias's enabled deployments (so that any of them takes
the result), minus the completion tokens asked for (``max_completion_tokens``/``max_tokens``), as OpenAI counts
both against the window. Tokens are counted with that deployment's tokenizer where one is known (OpenAI's
BPEs), else estimated as characters / 4 plus ``safety_margin``. A prompt is counted as OpenAI documents it:
each message's text and tool calls' JSON, 3 tokens per message and 3 for the reply, plus the tool
definitions' JSON. What was dropped is said in ``x-gateway-context-truncated: N tokens``; the ledger bills
what the upstream reports for the prompt actually sent.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from backends import Endpoint
from errors import ContextWindowExceeded, InvalidRequest, Unavailable

from . import chunking
from .call import Call
from .router import Router
from .tokens import encoding_for

Policy = Literal["reject", "fallback", "truncate_oldest", "truncate_middle", "chunk"]
HEADER = "x-gateway-context-truncated"
_PER_MESSAGE = 3
_PINNED_ROLES = frozenset({"system", "developer"})
_OFF_LOOP_CHARS = 32_000


class ContextConfig(BaseModel):
    """``context:`` under a model alias or a tenant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: Policy = "fallback"
    safety_margin: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="added to estimated counts (deployments without a known tokenizer)",
    )
    chunk_overlap: int = Field(
        default=64,
        ge=0,
        description="chunk policy (embeddings): tokens shared by consecutive chunks (at most half a chunk)",
    )


@dataclass(frozen=True, slots=True)
class Counter:
    """Counts tokens with a deployment's tokenizer, or estimates them."""

    encoding: Any | None
    margin: float = 0.1

    def text(self, text: str) -> int:
        if not text:
            return 0
        ids = self._ids(text)
        return len(ids) if ids is not None else math.ceil(len(text) / 4 * (1 + self.margin))

    def _ids(self, text: str) -> list[int] | None:
        if self.encoding is None:
            return None
        try:
            return list(self.encoding.encode_ordinary(text))
        except ValueError:  # bpe-openai refuses one text of over 200k tokens: estimated then
            return None

    def message(self, message: Any) -> int:
        return _PER_MESSAGE + sum(self.text(t) for t in message_texts(message))

    def tools(self, body: dict[str, Any]) -> int:
        tools = body.get("tools")
        return self.text(orjson.dumps(tools).decode()) if tools else 0

    def cut(self, text: str, keep: int, marker: str) -> str:
        """``text`` with its middle replaced by ``marker``, keeping about ``keep`` tokens of head and tail."""
        head_n = keep - keep // 2
        tail_n = keep // 2
        ids = self._ids(text)
        if ids is not None and self.encoding is not None:
            head = self.encoding.decode(ids[:head_n])
            tail = self.encoding.decode(ids[len(ids) - tail_n :]) if tail_n else ""
            return head + marker + tail
        per_token = 4 / (1 + self.margin)
        head_chars, tail_chars = int(head_n * per_token), int(tail_n * per_token)
        return text[:head_chars] + marker + (text[len(text) - tail_chars :] if tail_chars else "")


def message_texts(message: Any) -> list[str]:
    """The texts of one chat message the model reads: content (string or text parts) and tool calls' JSON."""
    if not isinstance(message, dict):
        return []
    texts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    calls = message.get("tool_calls")
    if calls:
        texts.append(orjson.dumps(calls).decode())
    return texts


def _completion(body: dict[str, Any]) -> int:
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return limit if isinstance(limit, int) else 0


class ContextPolicies:
    """Applies each call's context policy before admission (so admission reserves what is sent)."""

    def __init__(
        self,
        router: Router,
        aliases: Mapping[str, ContextConfig | None],
        tenants: Mapping[str, ContextConfig | None],
    ) -> None:
        self._aliases = {a: c for a, c in aliases.items() if c is not None}
        self._tenants = {t: c for t, c in tenants.items() if c is not None}
        # Where a policy is configured: the smallest window of the alias and its deployment's tokenizer,
        # loaded here (bpe-openai's tables take a while and ~60 MB), not on a request's path.
        self._windows: dict[str, tuple[int, Any | None]] = {}
        for alias in aliases:
            if not self._tenants and alias not in self._aliases:
                continue  # no context policy anywhere for it: resilience's estimate, as before
            try:
                routes = router.routes(alias)
            except Unavailable:
                continue  # resilience says why
            if any(r.context_window is None for r in routes):
                continue  # a deployment with no known window: nothing to fit to
            smallest = min(routes, key=lambda r: r.context_window or 0)
            self._windows[alias] = (smallest.context_window or 0, encoding_for(smallest.deployment.model))

    def config(self, tenant: str, alias: str) -> ContextConfig:
        return self._tenants.get(tenant) or self._aliases.get(alias) or _DEFAULT

    async def fit(self, call: Call) -> None:
        """Leaves the call as it is, rewrites its messages to fit, or raises ``ContextWindowExceeded``."""
        config = self.config(call.tenant, call.alias)
        if call.endpoint is Endpoint.EMBEDDINGS and config.policy == "chunk" and call.alias in self._windows:
            inputs = call.body.get("input")
            size = (
                len(inputs)
                if isinstance(inputs, str)
                else sum(len(i) for i in inputs if isinstance(i, str | list))
                if isinstance(inputs, list)
                else 0
            )
            if size > _OFF_LOOP_CHARS:  # tokenizing a long input would hold the loop
                await asyncio.to_thread(self._chunk, call, config)
            else:
                self._chunk(call, config)
            return
        if call.endpoint is not Endpoint.CHAT or call.alias not in self._windows:
            return
        messages = call.body.get("messages")
        if not isinstance(messages, list):
            return
        if sum(len(t) for m in messages for t in message_texts(m)) > _OFF_LOOP_CHARS:
            await asyncio.to_thread(self._fit, call, config)  # tokenizing a long prompt would hold the loop
        else:
            self._fit(call, config)

    def _chunk(self, call: Call, config: ContextConfig) -> None:
        window, encoding = self._windows[call.alias]
        vectors = call.body.pop(chunking.FIELD, "mean")  # the gateway's field: never sent upstream
        if vectors not in ("mean", "all"):
            raise InvalidRequest(f'`{chunking.FIELD}` must be "mean" or "all".', param=chunking.FIELD)
        raw = call.body.get("input")
        single = isinstance(raw, str) or (isinstance(raw, list) and bool(raw) and isinstance(raw[0], int))
        inputs = [raw] if single else raw
        if not isinstance(inputs, list):
            return  # the upstream says what is wrong with it
        planned = chunking.split(
            inputs, window, config.chunk_overlap, encoding, config.safety_margin, every=vectors == "all"
        )
        if planned is None:
            return
        call.body["input"], call.chunks = planned
        split = [len(group) for group in call.chunks.groups if len(group) > 1]
        if split:
            call.record.response_headers[chunking.HEADER] = f"{len(split)} inputs into {sum(split)} chunks"

    def _fit(self, call: Call, config: ContextConfig) -> None:
        window, encoding = self._windows[call.alias]
        counter = Counter(encoding, config.safety_margin)
        completion = _completion(call.body)
        limit = window - completion
        messages = call.body["messages"]
        sizes = [counter.message(m) for m in messages]  # each message tokenized once
        fixed = _PER_MESSAGE + counter.tools(call.body)
        before = fixed + sum(sizes)
        call.prompt_tokens = before  # resilience's context check (and the fallback policy) use this count
        if before <= limit or config.policy == "fallback":
            return
        if config.policy == "reject":
            raise _exceeded(window, before + completion, "")
        fitted = (truncate_oldest if config.policy == "truncate_oldest" else truncate_middle)(
            messages, sizes, fixed, counter, limit
        )
        if fitted is None:
            what = (
                "the system prompts, tool definitions, the last user turn and the tool calls after it"
                if config.policy == "truncate_oldest"
                else "the marked head and tail of each message"
            )
            raise _exceeded(window, before + completion, f" Even {what} do not fit.")
        call.body["messages"], after = fitted
        call.prompt_tokens = after
        call.record.response_headers[HEADER] = f"{before - after} tokens"


_DEFAULT = ContextConfig()


def _exceeded(window: int, tokens: int, detail: str) -> ContextWindowExceeded:
    return ContextWindowExceeded(
        f"This model's maximum context length is {window} tokens. However, your messages and max_tokens come "
        f"to {tokens} tokens.{detail} Please reduce the length of the messages or of max_tokens.",
        param="messages",
    )


def _units(messages: list[Any]) -> tuple[list[list[int]], set[int]]:
    """The droppable units (lists of message indexes, oldest first) and the pinned indexes."""
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
        default=len(messages),
    )
    pinned = {
        i
        for i, m in enumerate(messages)
        if i >= last_user or (isinstance(m, dict) and m.get("role") in _PINNED_ROLES)
    }
    units: list[list[int]] = []
    owner: dict[str, list[int]] = {}  # tool_call_id -> the unit of the assistant message that made the call
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            units.append([i])
            continue
        role = message.get("role")
        if role == "tool":
            unit = owner.get(str(message.get("tool_call_id")))
            if unit is not None:
                unit.append(i)
                continue
            units.append([i])  # a result without its call (the upstream would refuse it anyway)
            continue
        unit = [i]
        units.append(unit)
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and call.get("id") is not None:
                owner[str(call["id"])] = unit
    # A unit with any pinned message is pinned whole: a tool result after the last user turn keeps its call.
    kept: list[list[int]] = []
    for unit in units:
        if any(i in pinned for i in unit):
            pinned.update(unit)
        else:
            kept.append(unit)
    return kept, pinned


def truncate_oldest(
    messages: list[Any], sizes: list[int], fixed: int, counter: Counter, limit: int
) -> tuple[list[Any], int] | None:
    """The messages with the oldest droppable turns left out until the prompt fits ``limit``, and the
    prompt's tokens then; None if it cannot fit. ``sizes``: each message's tokens; ``fixed``: the rest's."""
    units, _ = _units(messages)
    total = fixed + sum(sizes)
    dropped: set[int] = set()
    for unit in units:
        if total <= limit:
            break
        dropped.update(unit)
        total -= sum(sizes[i] for i in unit)
    if total > limit:
        return None
    return [m for i, m in enumerate(messages) if i not in dropped], total


_MARKER = "\n[... {} tokens omitted ...]\n"


def truncate_middle(
    messages: list[Any], sizes: list[int], fixed: int, counter: Counter, limit: int
) -> tuple[list[Any], int] | None:
    """The messages with the middle of the longest texts cut out (head and tail kept, the cut marked) until
    the prompt fits ``limit``, and the prompt's tokens then; None if it cannot fit."""
    messages = [dict(m) if isinstance(m, dict) else m for m in messages]
    total = fixed + sum(sizes)
    # Longest string contents first: one over-long message is the case this policy is for.
    order = sorted(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and isinstance(m.get("content"), str)),
        key=lambda i: -len(messages[i]["content"]),
    )
    for i in order:
        if total <= limit:
            break
        text: str = messages[i]["content"]
        size = counter.text(text)
        excess = total - limit
        keep = size - excess
        for _ in range(8):  # the marker's own tokens and the joins' re-tokenization: a few rounds at most
            marker = _MARKER.format(size - keep)
            if keep - counter.text(marker) <= 0:
                break
            cut = counter.cut(text, keep - counter.text(marker), marker)
            over = total - size + counter.text(cut) - limit
            if over <= 0:
                messages[i]["content"] = cut
                total = total - size + counter.text(cut)
                break
            keep -= over
        else:
            continue
        if total > limit:  # no room even for the marker: the message goes down to the marker alone
            marker = _MARKER.format(size).strip()
            total = total - size + counter.text(marker)
            messages[i]["content"] = marker
    return (messages, total) if total <= limit else None
