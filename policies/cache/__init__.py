"""The response cache: the exact key first, then the semantic cache (embedding, filtered vector search,
verifier). See docs/cache.md.

A request is eligible when the cache is on for its tenant and alias, it asks for one answer (``n`` 1) with
temperature 0 (or the tenant/alias says ``reuse: always``) and no logprobs. The client's
``Cache-Control: no-cache`` skips the lookup (the fresh answer is still stored); ``no-store`` keeps its
answer out of the cache. Answers are stored off the request's path by a background task that batches embeddings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from backends import Endpoint, UpstreamResponse
from errors import GatewayError

from ..call import Call
from ..cost import PriceTable
from ..models import model_info
from ..stores.layer import StoreLayer
from . import replay
from .config import CacheConfig, CacheOverride, Settings, combinations, resolve
from .exact import AnswerStore, Caps, MemoryStore, RedisStore, entry_key
from .key import Identity, identify
from .normalize import canonical
from .slots import code_prompt

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_QUEUE_LIMIT = 10_000
_SWEEP_S = 60.0
_CACHEABLE = (Endpoint.CHAT, Endpoint.EMBEDDINGS, Endpoint.RESPONSES, Endpoint.MESSAGES)
# Native formats' answers (passed through to OpenAI's Responses API, Anthropic's Messages API) are kept whole,
# exact tier only; their handlers write a hit back in the format's stream when the client streams.
_NATIVE = (Endpoint.RESPONSES, Endpoint.MESSAGES)
_KINDS = {
    Endpoint.CHAT: "chat",
    Endpoint.EMBEDDINGS: "embeddings",
    Endpoint.RESPONSES: "responses",
    Endpoint.MESSAGES: "messages",
}


@dataclass(slots=True)
class _Pending:
    key: str
    value: bytes
    ttl_s: float
    tenant: str
    alias: str
    identity: Identity
    semantic: bool
    expires: float


class ResponseCache:
    """The pipeline's cache policy: ``lookup`` before the upstream, ``store`` after a completed answer."""

    def __init__(
        self,
        config: CacheConfig | None = None,
        *,
        tenants: Mapping[str, CacheOverride | None] = {},
        aliases: Mapping[str, CacheOverride | None] = {},
        stores: StoreLayer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``stores``: the process's store layer; answers go to its Redis when it has one, else to this
        process's memory. ``clock``: the wall clock exact entries expire by (Redis also drops them at their TTL;
        the semantic index reads the machine's)."""
        self.config = config or CacheConfig()
        # deployment id -> its price (config, else catalog): what an answer cost, and so what a hit saves
        self.prices: Mapping[str, PriceTable] = {}
        self._tenants, self._aliases = dict(tenants), dict(aliases)
        self._settings: dict[tuple[str, str], Settings] = {}
        caps = Caps(self.config.max_entries, self.config.max_bytes, self.config.max_entry_bytes)
        self._clock = clock  # what entries expire by (exact and semantic tiers alike)
        self.answers: AnswerStore = (
            RedisStore(stores, caps, clock=clock)
            if stores is not None and stores.shared
            else MemoryStore(caps, clock)
        )
        # what some tenant and alias may use decides what is built: no model is loaded for nobody
        pairs = combinations(self.config, self._tenants.values(), self._aliases.values())
        self.enabled = any(c.enabled for c in pairs)
        self.semantic_enabled = any(c.enabled and c.semantic for c in pairs)
        self.embedder: Any = None
        self.index: Any = None
        self.index_ready = False
        self._vectors: OrderedDict[str, np.ndarray] = (
            OrderedDict()
        )  # query vectors kept from lookup for store
        self._queue: asyncio.Queue[_Pending] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0

    def settings(self, tenant: str, alias: str) -> Settings:
        """The cache settings that apply to one tenant and alias (defaults < alias < tenant)."""
        found = self._settings.get((tenant, alias))
        if found is None:
            found = resolve(self.config, self._aliases.get(alias), self._tenants.get(tenant))
            self._settings[(tenant, alias)] = found
        return found

    def _eligible(self, call: Call) -> Settings | None:
        if call.endpoint not in _CACHEABLE:
            return None
        settings = self.settings(call.tenant, call.alias)
        if not settings.enabled:
            return None
        if call.endpoint is Endpoint.EMBEDDINGS:
            return settings
        body = call.body
        if body.get("n", 1) not in (1, None) or body.get("logprobs") or body.get("top_logprobs"):
            return None
        if settings.reuse == "deterministic" and body.get("temperature") not in (0, 0.0):
            return None
        return settings

    def wants(self, call: Call) -> bool:
        """Whether this request's answer may be stored (so the pipeline keeps a stream's events)."""
        return self._eligible(call) is not None and "no-store" not in _directives(call.headers)

    async def lookup(self, call: Call) -> UpstreamResponse | None:
        """The cached answer to ``call`` or None; sets ``call.record.cache`` (and cost, saved, ``x-cache``)."""
        settings = self._eligible(call)
        if settings is None:
            return None
        call.record.cached("miss")
        if "no-cache" in _directives(call.headers):
            return None
        identity = identify(call.tenant, call.alias, call.endpoint.value, call.body)
        # a cache that fails (Qdrant unreachable, a slow embedding) is a miss, never a failed request; Redis away
        # is the store layer's to handle (fail open: memory; fail closed: 503)
        try:
            raw = await self.answers.get(entry_key(call.tenant, call.alias, identity.key))
            if raw is not None:
                return self._hit(call, raw, "hit-exact", None)
            if call.endpoint in _NATIVE or not (
                self._semantic_question(settings, identity) and self.index_ready and self.embedder.loaded
            ):
                return None
            return await asyncio.wait_for(
                self._semantic(call, settings, identity), self.config.semantic.timeout_s
            )
        except GatewayError:  # the store is away and fails closed: the request is refused (503)
            raise
        except Exception as exc:
            log.warning("cache lookup failed, answering from upstream: %r", exc)
            return None

    async def _semantic(self, call: Call, settings: Settings, identity: Identity) -> UpstreamResponse | None:
        from . import verifier

        assert identity.question is not None
        vector = await self.embedder.embed(canonical(identity.question))
        self._remember(identity.key, vector)
        shipped = verifier.operating_point(settings.mode)
        threshold = settings.threshold if settings.threshold is not None else shipped.threshold
        semantic = self.config.semantic
        min_probability = (
            semantic.min_probability if semantic.min_probability is not None else shipped.min_probability
        )
        candidates = await self.index.search(
            vector,
            tenant=call.tenant,
            alias=call.alias,
            fingerprint=identity.fingerprint,
            threshold=threshold,
            limit=semantic.candidates,
        )
        for candidate in candidates:
            if (
                semantic.verify
                and not verifier.verify(
                    identity.question,
                    vector,
                    candidate.text,
                    candidate.vector,
                    min_probability=min_probability,
                    strict=settings.mode == "faq",
                ).ok
            ):
                continue
            raw = await self.answers.get(candidate.entry)
            if raw is None:  # the answer expired or was evicted: its point goes too
                await self.index.delete_entry(candidate.entry)
                continue
            return self._hit(call, raw, "hit-semantic", candidate.score)
        return None

    def _semantic_question(self, settings: Settings, identity: Identity) -> bool:
        question = identity.question
        semantic = self.config.semantic
        return (
            settings.semantic
            and question is not None
            and len(question) <= semantic.max_question_chars
            and (semantic.code == "semantic" or not code_prompt(question))
        )

    def _hit(self, call: Call, raw: bytes, kind: str, similarity: float | None) -> UpstreamResponse:
        entry = orjson.loads(raw)
        call.record.cached(kind, entry.get("cost"), similarity)
        answer = replay.fresh(entry["answer"]) if entry.get("kind") == "chat" else entry["answer"]
        if call.stream and call.endpoint not in _NATIVE:
            return UpstreamResponse(
                status=200, chunks=replay.stream(replay.chunks(answer, call.client_wants_usage))
            )
        body = orjson.dumps(answer)
        return UpstreamResponse(status=200, body=body, data=answer)

    def store(self, call: Call, answer: UpstreamResponse) -> None:
        """Store a completed answer (off the request's path). ``call.collected`` holds a stream's events."""
        settings = self._eligible(call)
        if settings is None or self._queue is None or "no-store" in _directives(call.headers):
            return
        if call.stream and call.endpoint not in _NATIVE:
            data = replay.assemble(call.collected or [], call.usage)
        else:  # a native stream's handler hands over the whole answer it read
            data = answer.data if answer.data is not None else _parse(answer.body)
        if (
            not isinstance(data, dict) or answer.status != 200 or data.get("error")
        ):  # a response's error is null
            return
        if call.endpoint is Endpoint.CHAT and not _whole_chat(data):
            return
        if call.endpoint in _NATIVE and not _whole_native(data):
            return
        identity = identify(call.tenant, call.alias, call.endpoint.value, call.body)
        entry = {
            "kind": _KINDS[call.endpoint],
            "answer": data,
            "cost": _cost(data, call.record.cost_usd, self.prices.get(call.record.deployment or "")),
            "question": identity.question,
        }
        pending = _Pending(
            key=entry_key(call.tenant, call.alias, identity.key),
            value=orjson.dumps(entry),
            ttl_s=settings.ttl_s,
            tenant=call.tenant,
            alias=call.alias,
            identity=identity,
            semantic=call.endpoint not in _NATIVE
            and self._semantic_question(settings, identity)
            and self.index_ready,
            expires=self._clock() + settings.ttl_s,
        )
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.dropped += 1

    async def purge(self, tenant: str, alias: str | None = None) -> int:
        """Removes a tenant's entries (one alias's when given) from both caches; returns how many answers."""
        await self.drain()
        removed = await self.answers.purge(tenant, alias)
        if self.index_ready:
            await self.index.purge(tenant, alias)
        return removed

    async def drain(self) -> None:
        """Waits until every answer handed to ``store`` so far is stored."""
        if self._queue is not None:
            await self._queue.join()

    def _remember(self, key: str, vector: np.ndarray) -> None:
        self._vectors[key] = vector
        while len(self._vectors) > 1024:
            self._vectors.popitem(last=False)

    async def _writer(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 64:
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception:  # a failed store loses a cache entry, never the writer
                log.exception("cache store failed for %d answers", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[_Pending]) -> None:
        for item in batch:
            await self.answers.set(item.key, item.value, item.ttl_s)
        semantic = [item for item in batch if item.semantic]
        if not semantic:
            return
        missing = [item for item in semantic if item.identity.key not in self._vectors]
        if missing:
            vectors = await self.embedder.embed_many(
                [canonical(str(item.identity.question)) for item in missing]
            )
            for item, vector in zip(missing, vectors, strict=True):
                self._vectors[item.identity.key] = vector
        points = []
        for item in semantic:
            vector = self._vectors.pop(item.identity.key)
            points.append(
                (
                    vector,
                    {
                        "tenant": item.tenant,
                        "alias": item.alias,
                        "fingerprint": item.identity.fingerprint,
                        "text": item.identity.question,
                        "entry": item.key,
                        "expires": item.expires,
                    },
                )
            )
        await self.index.add_many(points)

    async def _open_index(self) -> None:
        """Opens the vector index, retrying while it is unreachable (a Qdrant server starting beside us);
        until then semantic lookups miss and answers go to the exact cache only. Then sweeps expired points."""
        delay = 1.0
        while True:
            try:
                await self.index.start()
                break
            except Exception as exc:
                log.warning("semantic cache index not available, retrying in %.0f s: %r", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        self.index_ready = True
        while True:
            await asyncio.sleep(_SWEEP_S)
            try:
                await self.index.sweep()
            except Exception as exc:
                log.warning("semantic cache sweep failed: %r", exc)

    async def start(self) -> None:
        if not self.enabled:
            return
        self._queue = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        if self.semantic_enabled:
            from .embedder import Embedder
            from .semantic import build_index

            self.embedder = Embedder()
            await self.embedder.start()  # the model loads in its worker thread; lookups wait for it
            self.index = build_index(self.config.semantic, self._clock)
            self._tasks.append(asyncio.create_task(self._open_index(), name="cache-index"))
        self._tasks.append(asyncio.create_task(self._writer(), name="cache-writer"))

    async def close(self) -> None:
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.index is not None:
            await self.index.close()
        if self.embedder is not None:
            await self.embedder.close()


def _directives(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Cache-Control") or headers.get("cache-control") or ""
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def _parse(body: bytes | None) -> Any:
    if body is None:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _whole_chat(data: dict[str, Any]) -> bool:
    choices = data.get("choices")
    return (
        isinstance(choices, list)
        and len(choices) == 1
        and isinstance(choices[0], dict)
        and isinstance(choices[0].get("message"), dict)
        and bool(choices[0].get("finish_reason"))
    )


def _whole_native(data: dict[str, Any]) -> bool:
    """A completed ``response`` or a finished ``message``: what a replay may stand for."""
    return (
        data.get("status") == "completed"
        if data.get("object") == "response"
        else data.get("type") == "message" and bool(data.get("stop_reason"))
    )


def _openai_usage(usage: Any) -> Any:
    """A Responses or Messages ``usage`` (``input_tokens``/``output_tokens``) in chat's shape, for pricing."""
    if not isinstance(usage, dict) or "input_tokens" not in usage:
        return usage
    cached = int(usage.get("cache_read_input_tokens") or 0) or int(
        (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    )
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0)
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        prompt += cached + written  # Anthropic counts cached and written tokens apart from input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": int(usage.get("output_tokens") or 0),
        "prompt_tokens_details": {"cached_tokens": cached, "cache_creation_tokens": written},
    }


def _cost(answer: dict[str, Any], recorded: float | None, price: PriceTable | None = None) -> float | None:
    """What the answer cost when it was made: its usage at the deployment's price (config, else catalog), else
    at the catalog's price of the model it names, else as recorded."""
    usage = _openai_usage(answer.get("usage"))
    if price is not None and price.known and (cost := price.usd(usage)) is not None:
        return cost
    info = model_info(str(answer.get("model") or ""))
    cost = PriceTable.of(info).usd(usage) if info is not None else None
    return recorded if cost is None else cost


__all__ = ["CacheConfig", "CacheOverride", "ResponseCache"]
