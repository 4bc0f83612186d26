"""Getting an answer from an alias's deployments: routing, retries, fallbacks, breakers, timeouts.

One request's attempts, in order (docs/resilience.md):

    for the alias, then each fallback alias whose ``on`` matches the last error's classes:
        deployments that fit the prompt (context window, by estimate)
        up to ``retry.attempts`` attempts, each on a deployment picked by the alias's strategy among
        those not tried yet and whose breaker lets it through; before a retry: the retry budget, then
        backoff with full jitter (or the upstream's Retry-After) when it goes back to a deployment
        already tried; every attempt bounded by the deployment's ``attempt_s`` / ``ttft_s`` and the
        request's deadline

A stream counts as answered once its first chunk has arrived (pulled here, before the answer is handed
on): until then a failure is retried; after it, nothing is, and a failure ends the stream with an error
event (gateway/proxy.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import orjson

from backends import UpstreamResponse, spans, sse
from errors import (
    ContextWindowExceeded,
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)

from .breaker import Breakers, State
from .call import Call
from .clock import SYSTEM, Clock
from .fallback import error_classes, estimate_tokens
from .resilience_config import ErrorClass, FallbackConfig, ResilienceConfig, RetryConfig
from .retry import RetryBudget, backoff, retry_after, retryable
from .router import Route, Router
from .stores.layer import StoreLayer

_Answer = tuple["_Held", UpstreamResponse, Route]


class _Sending:
    """``Resilience.send``'s context: a class rather than a generator, as it is on every request's path."""

    __slots__ = ("_call", "_held", "_resilience")

    def __init__(self, resilience: Resilience, call: Call) -> None:
        self._resilience = resilience
        self._call = call
        self._held: _Held | None = None

    async def __aenter__(self) -> UpstreamResponse:
        self._held = await self._resilience._answer(self._call)
        return self._held.upstream

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._held is not None:
            await self._held.__aexit__(kind, exc, tb)


class Events:
    """What this layer reports; gateway/metrics.py turns it into Prometheus metrics."""

    def attempt(self, route: Route, status: int) -> None:
        pass

    def retry(self, alias: str) -> None:
        pass

    def budget_exhausted(self, alias: str) -> None:
        pass

    def fallback(self, alias: str, to: str, reason: str) -> None:
        pass

    def breaker(self, key: str, state: State) -> None:
        pass


class Resilience:
    def __init__(
        self,
        router: Router,
        config: ResilienceConfig | None = None,
        *,
        retry: Mapping[str, RetryConfig | None] | None = None,
        fallbacks: Mapping[str, Sequence[FallbackConfig]] | None = None,
        stores: StoreLayer | None = None,
        events: Events | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        """``stores``: the process's store layer, through which breaker state is shared between gateway
        processes when it has Redis (None: process memory). ``retry``/``fallbacks``: per alias."""
        self.router = router
        self.clock = clock  # breaker cool-downs, the retry budget's window, and the wait before a retry
        self.config = config or ResilienceConfig()
        self.events = events or Events()
        aliases = [alias for alias in router.routing]
        self._retry = {a: (retry or {}).get(a) or self.config.retry for a in aliases}
        self._budgets = {a: RetryBudget(self._retry[a], clock.monotonic) for a in aliases}
        self._fallbacks = {a: tuple((fallbacks or {}).get(a) or ()) for a in aliases}
        self._chains: dict[str, tuple[tuple[str, frozenset[ErrorClass] | None], ...]] = {
            a: ((a, None), *((f.alias, frozenset(f.on)) for f in self._fallbacks[a])) for a in aliases
        }
        self.breakers = Breakers(
            self.config.breaker,
            [r.key for r in router.all_routes()],
            stores,
            on_change=self.events.breaker,
            clock=clock,
        )
        self._ignore = frozenset(self.config.breaker.ignore_status)
        # Told each outcome the breakers count of an alias's variant: (alias, variant, ok, latency_s); the
        # canary watch (canary.py) judges a candidate variant on them.
        self.observe: Callable[[str, str, bool, float], None] | None = None

    def send(self, call: Call) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Route and send, retrying and falling back as configured; the context holds the answering
        upstream's connection. Sets ``record.deployment`` and appends ``deployment:status`` per attempt
        to ``record.attempts``."""
        return _Sending(self, call)

    async def _answer(self, call: Call) -> _Held:
        loop = asyncio.get_running_loop()
        sent = time.perf_counter()
        deadline = loop.time() + self._deadline_s(call)
        attempt = _Attempt(call)
        answer: _Answer | GatewayError | None = None
        for alias, triggers in self._chains[call.alias]:
            if triggers is not None:
                assert isinstance(answer, GatewayError)
                matched = error_classes(answer) & triggers
                if not matched:
                    continue
                self.events.fallback(call.alias, alias, min(matched, key=lambda c: c == "any"))
            if loop.time() >= deadline:
                break
            answer = await self._try_alias(call, alias, deadline, attempt)
            if not isinstance(answer, GatewayError):
                break
        if answer is None:
            answer = DeadlineExceeded(f"The request's deadline passed before `{call.alias}` could be tried.")
        if isinstance(answer, GatewayError):
            raise answer
        held, _, route = answer
        call.record.answered(route.id, time.perf_counter() - sent)
        return held

    def _deadline_s(self, call: Call) -> float:
        name = self.config.deadline_header
        raw = call.headers.get(name)
        if raw is None:
            return self.config.deadline_s
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not value > 0 or math.isinf(value):
            raise InvalidRequest(f"The header {name} must be a positive number of seconds, not {raw!r}.")
        return min(value, self.config.max_deadline_s)

    async def _try_alias(
        self, call: Call, alias: str, deadline: float, attempt: _Attempt
    ) -> _Answer | GatewayError:
        try:
            routes = self.router.routes(alias)
        except Unavailable as exc:
            return exc
        if call.deployments is not None and alias == call.alias:  # the variant's own (policies/variants.py)
            routes = tuple(r for r in routes if r.deployment.id in call.deployments)
            if not routes:
                return Unavailable(f"Variant `{call.variant}` of `{alias}` has no enabled deployment.")
        if self.config.context_check and any(r.context_window for r in routes):
            tokens = attempt.tokens()
            fits = tuple(r for r in routes if r.context_window is None or tokens <= r.context_window)
            if not fits:
                window = max(r.context_window or 0 for r in routes)
                return ContextWindowExceeded(
                    f"This model's maximum context length is {window} tokens. However, your messages and "
                    f"max_tokens come to about {tokens} tokens (estimated). Please reduce the length of the "
                    "messages or of max_tokens.",
                    param="messages",
                )
            routes = fits
        config = self._retry[alias]
        budget = self._budgets[alias]
        budget.request()
        session = self._session(call, alias)
        record = call.record
        loop = asyncio.get_running_loop()
        tried: list[Route] = []
        last: GatewayError | None = None
        for number in range(config.attempts):
            if number and not budget.try_retry():
                self.events.budget_exhausted(alias)
                return last or Unavailable(f"No retry left for `{alias}`.")
            route = await self._choose(alias, routes, tried, session, call.tenant)
            if route is None:
                return last or Unavailable(
                    f"Every deployment of `{alias}` is failing: their circuit breakers are open.",
                    code="circuit_open",
                )
            if number:
                assert last is not None
                wait = 0.0
                if route in tried:
                    wait = backoff(number, config)
                    if route is tried[-1] and (asked := retry_after(last, self.clock.time())) is not None:
                        if asked > config.retry_after_max_s:
                            return last
                        wait = max(wait, asked)
                if loop.time() + wait >= deadline:
                    return last
                self.events.retry(alias)
                if wait:
                    await self.clock.sleep(wait)
            tried.append(route)
            span = spans.start("upstream", route.deployment, route.id)
            sent = loop.time()
            try:
                held, upstream, first = await self._attempt(call, route, attempt.body(), deadline)
            except GatewayError as exc:
                spans.end(span, exc.status, exc.message)
                record.attempted(route.id, exc.status)
                self.events.attempt(route, exc.status)
                if exc.status not in self._ignore:
                    await self.breakers.failure(route.key, call.tenant)
                    self._observe(call, alias, False, loop.time() - sent)
                last = exc
                if not retryable(exc, config) or loop.time() >= deadline:
                    return exc
                continue
            spans.end(span, upstream.status)
            record.attempted(route.id, upstream.status)
            self.events.attempt(route, upstream.status)
            latency = loop.time() - sent
            if upstream.chunks is not None:
                # A stream's outcome is decided at its end (a half-open trial included), not at its first chunk.
                upstream.chunks = self._watch(route, first, upstream.chunks, deadline, call, alias, latency)
            else:
                await self.breakers.success(route.key, call.tenant)
                self._observe(call, alias, True, latency)
            return held, upstream, route
        return last or Unavailable(f"No attempt left for `{alias}`.")

    async def _choose(
        self, alias: str, routes: Sequence[Route], tried: list[Route], session: str | None, tenant: str
    ) -> Route | None:
        if not tried and len(routes) == 1:
            route = routes[0]
            return (
                route
                if self.breakers.closed(route.key, tenant) or await self.breakers.admit(route.key, tenant)
                else None
            )
        if tried:
            untried = [r for r in routes if r not in tried]
            # Everything tried: go round again, avoiding the one that just failed where there is a choice.
            pool = untried or [r for r in routes if r is not tried[-1]] or list(routes)
        else:
            pool = list(routes)
        breakers = self.breakers
        while pool:
            route = self.router.pick(alias, pool, session)
            if breakers.closed(route.key, tenant) or await breakers.admit(route.key, tenant):
                return route
            pool.remove(route)
        return None

    def _session(self, call: Call, alias: str) -> str | None:
        routing = self.router.routing[alias]
        if routing.strategy != "sticky":
            return None
        session = call.headers.get(routing.session_header)
        if session is None:
            user = call.body.get("user")
            session = user if isinstance(user, str) else None
        return session

    async def _attempt(
        self, call: Call, route: Route, body: dict[str, Any], deadline: float
    ) -> tuple[_Held, UpstreamResponse, bytes]:
        """One attempt, until its answer can be relayed: a whole body, or a stream's first chunk."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeouts = route.deployment.timeouts
        limit, reason = deadline, "deadline"
        if timeouts.attempt_s is not None and started + timeouts.attempt_s < limit:
            limit, reason = started + timeouts.attempt_s, f"attempt_s ({timeouts.attempt_s:g}s)"
        if call.stream and timeouts.ttft_s is not None and started + timeouts.ttft_s < limit:
            limit, reason = started + timeouts.ttft_s, f"ttft_s ({timeouts.ttft_s:g}s)"
        held = _Held(route, route.backend.send(call.endpoint, body, stream=call.stream))
        first = b""
        try:
            async with asyncio.timeout_at(limit):
                upstream = await held.enter()
                if upstream.chunks is not None:
                    try:
                        first = await anext(upstream.chunks)
                    except StopAsyncIteration:
                        raise UpstreamError(f"upstream {route.id} ended its stream before any data") from None
                    if not _first_event_ok(first):
                        raise UpstreamError(
                            f"upstream {route.id} began its stream with an event that is not JSON"
                        )
        except TimeoutError:
            await held.__aexit__(None, None, None)
            if reason == "deadline":
                raise DeadlineExceeded(
                    f"The request's deadline passed while waiting for upstream {route.id}."
                ) from None
            raise UpstreamTimeout(f"upstream {route.id} did not answer within {reason}") from None
        except BaseException as exc:
            await held.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        route.observe_latency(loop.time() - started, self.router.routing[route.alias].latency_alpha)
        return held, upstream, first

    def _observe(self, call: Call, alias: str, ok: bool, latency_s: float) -> None:
        if self.observe is not None and call.variant is not None and alias == call.alias:
            self.observe(alias, call.variant, ok, latency_s)

    async def _watch(
        self,
        route: Route,
        first: bytes,
        chunks: AsyncIterator[bytes],
        deadline: float,
        call: Call,
        alias: str,
        latency_s: float,
    ) -> AsyncIterator[bytes]:
        """The stream from its first chunk, within the request's deadline; a failure now counts against the
        breaker and goes on to the client as an error event (no retry once bytes have gone out)."""
        tenant = call.tenant
        yield first
        loop = asyncio.get_running_loop()
        silence = route.deployment.timeouts.read_s
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                if remaining < silence:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
                else:
                    # A timer per chunk is the costly part of a stream's path; while the deadline is further
                    # away than read_s, the backend's silence timeout fires first, and a trickle is caught
                    # by the check above at its next chunk.
                    chunk = await anext(chunks)
                yield chunk
        except StopAsyncIteration:
            await self.breakers.success(route.key, tenant)
            self._observe(call, alias, True, latency_s)
            return
        except TimeoutError:
            await self.breakers.failure(route.key, tenant)
            self._observe(call, alias, False, latency_s)
            raise DeadlineExceeded(
                f"The request's deadline passed while upstream {route.id} was streaming."
            ) from None
        except GatewayError as exc:
            if exc.status not in self._ignore:
                await self.breakers.failure(route.key, tenant)
                self._observe(call, alias, False, latency_s)
            raise

    async def deployments(self) -> dict[str, Any]:
        """Every deployment with its breaker (fresh from the store), load and latency: the admin API."""
        views = await self.breakers.snapshot()
        now = self.clock.time()
        data = []
        for route in self.router.all_routes():
            view = views[route.key]
            data.append(
                {
                    "alias": route.alias,
                    "deployment": route.id,
                    "provider": route.deployment.provider,
                    "model": route.deployment.model,
                    "strategy": self.router.routing[route.alias].strategy,
                    "weight": route.weight,
                    "context_window": route.context_window,
                    "outstanding": route.outstanding,
                    "latency_ewma_ms": None if route.latency_s is None else round(route.latency_s * 1000, 3),
                    "breaker": {
                        "state": str(view.state),
                        "consecutive_failures": view.failures,
                        "retry_in_s": round(max(view.open_until - now, 0.0), 3)
                        if view.state is State.OPEN
                        else None,
                    },
                }
            )
        fallbacks = {
            a: [{"alias": f.alias, "on": list(f.on)} for f in chain]
            for a, chain in self._fallbacks.items()
            if chain
        }
        return {
            "object": "list",
            "data": data,
            "fallbacks": fallbacks,
            "breaker_store": "redis" if self.breakers.shared else "memory",
        }

    async def start(self) -> None:
        await self.breakers.start()

    async def close(self) -> None:
        await self.breakers.close()


class _Attempt:
    """What every attempt of one request shares: the body as the client sent it (backends set their own
    model on the copy they get) and the prompt's size estimate, worked out once."""

    __slots__ = ("_call", "_pristine", "_sent", "_tokens")

    def __init__(self, call: Call) -> None:
        self._call = call
        self._pristine = dict(call.body)
        self._sent = False
        self._tokens: int | None = None

    def body(self) -> dict[str, Any]:
        if not self._sent:
            self._sent = True
            return self._call.body
        return dict(self._pristine)

    def tokens(self) -> int:
        if self._tokens is None:
            counted = self._call.prompt_tokens  # by the context policy, with the deployment's tokenizer
            self._tokens = (
                estimate_tokens(self._call.body)
                if counted is None
                else counted
                + (self._call.body.get("max_completion_tokens") or self._call.body.get("max_tokens") or 0)
            )
        return self._tokens


class _Held:
    """An attempt's upstream connection (the backend's ``send`` context), held while its answer is
    relayed; counts toward the deployment's outstanding requests, and holds one of its ``max_concurrency``
    slots, until released."""

    __slots__ = ("_context", "_entered", "_route", "_slot", "upstream")

    def __init__(self, route: Route, context: AbstractAsyncContextManager[UpstreamResponse]) -> None:
        self._route = route
        self._context = context
        self._entered = False
        self._slot: str | None = None
        self.upstream: UpstreamResponse

    async def enter(self) -> UpstreamResponse:
        cap = self._route.cap
        if cap is not None:
            self._slot = await cap.take()
        self._route.outstanding += 1
        try:
            upstream = await self._context.__aenter__()
        except BaseException:
            self._route.outstanding -= 1  # the backend's context cleaned up after itself
            await self._give_back()
            raise
        self._entered = True
        self.upstream = upstream
        return upstream

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._entered:
            return
        self._entered = False
        self._route.outstanding -= 1
        try:
            await self._context.__aexit__(kind, exc, tb)
        finally:
            await self._give_back()

    async def _give_back(self) -> None:
        if self._slot is not None:
            assert self._route.cap is not None
            slot, self._slot = self._slot, None
            await self._route.cap.give_back(slot)


def _first_event_ok(chunk: bytes) -> bool:
    # Nothing has reached the client yet: a garbled first event can still be retried elsewhere.
    events = sse.Decoder().feed(chunk)
    if not events or events[0].done:
        return True
    try:
        orjson.loads(events[0].data)
    except orjson.JSONDecodeError:
        return False
    return True
