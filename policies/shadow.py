"""Shadow traffic: a share of the requests a variant serves (``variants.NAME.shadow: {variant, share}``), from
an upstream or the cache, is sent again to another variant once the client's answer is complete; the shadow's answer is discarded, and
what it did is recorded so that a team can judge a variant before it serves anyone.

A shadow request runs after the client's answer went out, in a task of its own: it adds nothing to the
client's latency and cannot change its answer. It goes through the shadow variant's prompt and parameters,
the context policy and resilience (its own routing, retries, breakers), never through the cache or the
limits: it is non-streamed whatever the client asked, and it is ledgered to the client's tenant under the
key ``shadow`` and the variant ``shadow:NAME`` (``/admin/usage?group_by=variant``), priced as any request,
counted against no rate limit and no budget. Recorded per alias and variant (in this process, since it
started; ``/admin/aliases/{alias}/variants/stats`` and ``/metrics``): requests, errors, latency, tokens, cost
and, for a non-streamed text answer, the similarity of the shadow's text to the served one.

Similarity: the cosine of the two texts' sentence embeddings when the semantic cache has an embedder (the
cache extra installed and a semantic cache configured; a shadow waits for its model to load), else the cosine of their word-count vectors
(lower-cased words of letters and digits): a cheap measure of shared wording, not of meaning.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from errors import GatewayError

from . import metrics
from .admission import Admission
from .call import Call
from .context import ContextPolicies
from .record import RequestRecord
from .resilience import Resilience
from .variants import HEADER, SHADOW_KEY, Variants

_WORD = re.compile(r"\w+")
_MAX_INFLIGHT = 64  # shadows running at once in a process; more are dropped (counted), never queued

Similarity = Callable[[str, str], Awaitable[tuple[float, str]]]


def word_similarity(a: str, b: str) -> float:
    """Cosine of the two texts' word-count vectors (0 when either has no word)."""
    ca, cb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    dot = sum(n * cb[w] for w, n in ca.items())
    norm = math.sqrt(sum(n * n for n in ca.values())) * math.sqrt(sum(n * n for n in cb.values()))
    return dot / norm if norm else 0.0


def answer_text(data: Any) -> str | None:
    """The first choice's text of a whole chat (or completions) answer."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        return None
    choice = data["choices"][0]
    if not isinstance(choice, dict):
        return None
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return text if isinstance(text, str) else None


@dataclass(slots=True)
class ShadowStats:
    """What one alias's shadow variant did (this process, since it started)."""

    requests: int = 0
    errors: int = 0
    dropped: int = 0  # not sent: too many shadows in flight
    latency_s: list[float] = field(default_factory=list)  # the newest 1,000
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    similarities: list[float] = field(default_factory=list)  # the newest 1,000
    similarity_method: str | None = None

    def view(self) -> dict[str, Any]:
        ordered = sorted(self.latency_s)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "dropped": self.dropped,
            "latency_p50_s": round(ordered[len(ordered) // 2], 4) if ordered else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 9),
            "similarity_mean": round(sum(self.similarities) / len(self.similarities), 4)
            if self.similarities
            else None,
            "similarity_count": len(self.similarities),
            "similarity_method": self.similarity_method,
        }


def _keep(values: list[float], value: float) -> None:
    values.append(value)
    if len(values) > 1000:
        del values[: len(values) - 1000]


class Shadows:
    """Sends the shadow requests ``Variants.choose`` drew (``call.shadow``) and keeps their stats."""

    def __init__(
        self,
        variants: Variants,
        context: ContextPolicies | None,
        admission: Admission,
        resilience: Resilience,
        embed: Callable[[], Any] | None = None,
    ) -> None:
        """``embed``: returns the semantic cache's embedder when it has one (else None)."""
        self._variants = variants
        self._context = context
        self._admission = admission
        self._resilience = resilience
        self._embed = embed
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats: dict[tuple[str, str], ShadowStats] = {}
        self._log = structlog.get_logger("gateway.shadow")

    def mirror(self, call: Call, served: Any) -> None:
        """After ``call`` was answered (``served``: its whole answer's JSON, None for a stream): its shadow, if
        it drew one, in the background."""
        if call.shadow is None:
            return
        variant, body = call.shadow
        stats = self.stats.setdefault((call.alias, variant), ShadowStats())
        if len(self._tasks) >= _MAX_INFLIGHT:
            stats.dropped += 1
            metrics.SHADOW_REQUESTS.labels(call.alias, variant, "dropped").inc()
            return
        served_text = answer_text(served) if not call.stream else None
        task = asyncio.get_running_loop().create_task(self._run(call, variant, body, served_text, stats))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, served: Call, variant: str, body: dict[str, Any], served_text: str | None, stats: ShadowStats
    ) -> None:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        started = time.perf_counter()
        record = RequestRecord(
            request_id=served.record.request_id + "-shadow",
            started=started,
            endpoint=served.record.endpoint,
            tenant=served.tenant,
            key_id=SHADOW_KEY,
            alias=served.alias,
        )
        call = Call(
            record=record,
            tenant=served.tenant,
            key_id=SHADOW_KEY,
            alias=served.alias,
            endpoint=served.endpoint,
            body=body,
            stream=False,
            headers={HEADER: variant},
        )
        status, data = 200, None
        try:
            self._variants.choose(call)
            if self._context is not None:
                await self._context.fit(call)
            async with self._resilience.send(call) as upstream:
                data = upstream.data
                call.usage = data.get("usage") if isinstance(data, dict) else None
                record.take_usage(call.usage)
        except GatewayError as exc:
            status = exc.status
        except Exception:  # a shadow never fails anything else: logged, counted as an error
            self._log.exception("shadow request failed", alias=served.alias, variant=variant)
            status = 500
        latency = time.perf_counter() - started
        try:
            await self._admission.record_only(call, status, started)
        except Exception:
            self._log.exception("shadow request not ledgered", alias=served.alias, variant=variant)
        stats.requests += 1
        outcome = "ok" if status < 400 else "error"
        metrics.SHADOW_REQUESTS.labels(served.alias, variant, outcome).inc()
        if status >= 400:
            stats.errors += 1
            return
        _keep(stats.latency_s, latency)
        metrics.SHADOW_LATENCY.labels(served.alias, variant).observe(latency)
        stats.prompt_tokens += record.prompt_tokens or 0
        stats.completion_tokens += record.completion_tokens or 0
        for kind, count in (("prompt", record.prompt_tokens), ("completion", record.completion_tokens)):
            if count:
                metrics.SHADOW_TOKENS.labels(served.alias, variant, kind).inc(count)
        if record.cost_usd:
            stats.cost_usd += record.cost_usd
            metrics.SHADOW_COST.labels(served.alias, variant).inc(record.cost_usd)
        text = answer_text(data)
        if served_text is not None and text is not None:
            similarity, method = await self._similarity(served_text, text)
            _keep(stats.similarities, similarity)
            stats.similarity_method = method
            metrics.SHADOW_SIMILARITY.labels(served.alias, variant).observe(similarity)

    async def _similarity(self, a: str, b: str) -> tuple[float, str]:
        embedder = self._embed() if self._embed is not None else None
        if embedder is not None:
            try:
                await embedder.ready()  # a shadow runs in the background: it may wait for the model to load
                vectors = await embedder.embed_many([a, b])
                return float(max(min(float(vectors[0] @ vectors[1]), 1.0), -1.0)), "embedding"
            except Exception as exc:  # the model failed to load: the cheap measure, said so in the stats
                self._log.warning("shadow similarity by words: the embedder failed", error=str(exc))
        return word_similarity(a, b), "words"

    def view(self, alias: str) -> dict[str, Any]:
        return {variant: stats.view() for (name, variant), stats in self.stats.items() if name == alias}

    async def settled(self) -> None:
        """Waits for the shadows in flight (tests, and closing)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        # Best effort: a shadow still in flight when the pipeline closes (a reload, a shutdown) is dropped
        # rather than holding the close up to its deadline.
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
