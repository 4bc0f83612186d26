"""Where a request waits when a bucket or an in-flight limit is full: bounded, by priority class, and fair
between tenants (weighted fair queuing: a tenant's virtual time advances by 1/weight per admitted request,
the tenant with the smallest goes next, so one tenant's flood never starves another's trickle).

One dispatcher task per process retries the head waiter of the chosen tenant; a tenant whose bucket is
empty is skipped until the refill time the store computed. A waiter that times out or whose client goes
away leaves at once (its entry is dropped lazily, its count at once).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .stores.base import AdmitResult

_SLOT_POLL_S = 0.05  # a full in-flight limit may free up in another process: look again this often
_MIN_BLOCK_S = 0.002


class QueueFull(Exception):
    pass


@dataclass(eq=False, slots=True)
class _Waiter:
    priority: int
    seq: int
    attempt: Callable[[], Awaitable[AdmitResult]]
    abandoned: Callable[[AdmitResult], None]
    future: asyncio.Future[AdmitResult]
    gone: bool = False
    last: AdmitResult | None = None
    trying: asyncio.Future[None] | None = None  # done when the dispatcher's attempt for it has answered

    def __lt__(self, other: _Waiter) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


@dataclass(slots=True)
class _Tenant:
    weight: float
    heap: list[_Waiter] = field(default_factory=list)
    waiting: int = 0
    vtime: float = 0.0
    blocked_until: float = 0.0
    blocked_by_slot: bool = False


class FairQueue:
    def __init__(
        self, max_size: int, max_per_tenant: int, depth: Callable[[int], None] | None = None
    ) -> None:
        self.max_size = max_size
        self.max_per_tenant = max_per_tenant
        self._depth = depth
        self._tenants: dict[str, _Tenant] = {}
        self._size = 0
        self._vtime = 0.0
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def size(self) -> int:
        return self._size

    def waiting(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return state.waiting if state is not None else 0

    async def wait(
        self,
        tenant: str,
        weight: float,
        priority: int,
        max_wait_s: float,
        attempt: Callable[[], Awaitable[AdmitResult]],
        refused: AdmitResult,
        abandoned: Callable[[AdmitResult], None],
    ) -> AdmitResult:
        """Wait up to ``max_wait_s`` for ``attempt`` to admit; returns its last result (a refusal on timeout).
        An attempt under way when the time runs out is waited for and its answer counts; ``abandoned`` gets
        an admission that came as the client left (cancelled). Raises QueueFull when the queue, or
        this tenant's share of it, is full."""
        state = self._tenants.get(tenant)
        if self._size >= self.max_size or (state is not None and state.waiting >= self.max_per_tenant):
            raise QueueFull
        if state is None:
            state = self._tenants[tenant] = _Tenant(weight=weight, vtime=self._vtime)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(priority, next(self._seq), attempt, abandoned, loop.create_future())
        if refused.outcome == "bucket" and not state.heap:
            state.blocked_until = loop.time() + max(refused.retry_after, _MIN_BLOCK_S)
        heapq.heappush(state.heap, waiter)
        state.waiting += 1
        self._resize(1)
        self._ensure_running()
        self._wake.set()
        try:
            async with asyncio.timeout(max_wait_s):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            # An attempt sent before the time ran out may have admitted it already (the store took its tokens
            # and wrote its ledger reservation): its answer is this waiter's, a round trip late. Leaving without
            # it would refuse the client a request the ledger then records.
            while waiter.trying is not None:
                await asyncio.shield(waiter.trying)
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()  # its admission, or the store's failure
            return waiter.last or refused
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                result = waiter.future.result()
                if result.outcome == "ok":
                    waiter.abandoned(result)  # admitted just as the client left: give it back
            raise
        finally:
            if not waiter.future.done():
                waiter.gone = True
                state.waiting -= 1
                self._resize(-1)

    def slot_freed(self) -> None:
        """An in-flight slot was released in this process: waiters blocked by one may go now."""
        for state in self._tenants.values():
            if state.blocked_by_slot:
                state.blocked_until = 0.0
                state.blocked_by_slot = False
        self._wake.set()

    def _resize(self, delta: int) -> None:
        self._size += delta
        if self._depth is not None:
            self._depth(delta)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def _next(self, now: float) -> tuple[str | None, float]:
        best: str | None = None
        best_key = (0, 0.0)
        wake_at = float("inf")
        for name, state in list(self._tenants.items()):
            while state.heap and state.heap[0].gone:
                heapq.heappop(state.heap)
            if not state.heap:
                del self._tenants[name]
                continue
            if state.blocked_until > now:
                wake_at = min(wake_at, state.blocked_until)
                continue
            key = (state.heap[0].priority, state.vtime)
            if best is None or key < best_key:
                best, best_key = name, key
        return best, wake_at

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._tenants:
            now = loop.time()
            name, wake_at = self._next(now)
            if name is None:
                self._wake.clear()
                if not self._tenants:
                    break
                try:
                    async with asyncio.timeout(None if wake_at == float("inf") else max(wake_at - now, 0)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            state = self._tenants[name]
            waiter = state.heap[0]
            trying = waiter.trying = loop.create_future()
            try:
                result = await waiter.attempt()
            except Exception as exc:  # the store failed (fail closed): the waiter raises it
                _remove(state.heap, waiter)
                if not waiter.gone:
                    waiter.future.set_exception(exc)
                    state.waiting -= 1
                    self._resize(-1)
                continue
            finally:  # the waiter resumes after what follows has recorded this answer (no await in between)
                waiter.trying = None
                trying.set_result(None)
            if waiter.gone:
                if result.outcome == "ok":
                    waiter.abandoned(result)
                continue
            if result.outcome in ("bucket", "slot"):
                waiter.last = result
                by_slot = result.outcome == "slot"
                state.blocked_by_slot = by_slot
                state.blocked_until = loop.time() + (
                    _SLOT_POLL_S if by_slot else max(result.retry_after, _MIN_BLOCK_S)
                )
                continue
            _remove(state.heap, waiter)
            state.waiting -= 1
            self._resize(-1)
            if result.outcome == "ok":
                self._vtime = state.vtime
                state.vtime += 1 / state.weight
            waiter.future.set_result(result)


def _remove(heap: list[_Waiter], waiter: _Waiter) -> None:
    """Takes ``waiter`` out of its tenant's heap: no longer necessarily the head, since a waiter of a higher
    class may have arrived while its attempt was awaited (popping the head dropped that one instead)."""
    if heap and heap[0] is waiter:
        heapq.heappop(heap)
        return
    for i, queued in enumerate(heap):
        if queued is waiter:
            heap[i] = heap[-1]
            heap.pop()
            heapq.heapify(heap)
            return
