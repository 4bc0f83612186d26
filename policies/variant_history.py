"""Version control of an alias's variants: every change (a YAML change seen at start, or the admin API's
add, weights, promote, rollback) is kept in the store layer with who, when, what and why, and the variants
it left in force are what the gateway uses after a restart or a reload.

Keys (on the store layer's key/value surface, one hash tag per alias): ``gw:{v:ALIAS}:state`` the variants
in force and the fingerprint of the YAML they derive from; ``gw:{v:ALIAS}:history`` the changes, oldest
first, each JSON ``{"seq", "at", "who", "action", "why", "before", "after", "undoes"?}``.

Every change also bumps ``gw:variants:meta`` ``version``; each process polls it every ``poll_s`` and, when it
moved, takes every alias's stored variants (those derived from the same YAML as its own), so an admin change
made on one process serves on the others within ``poll_s``, without a reload.

A YAML whose variants differ from the fingerprint stored wins over the stored state (an operator edited the
file) and is recorded as a change by ``config``. Rollback restores the variants before the newest change not
already rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
import structlog

from errors import InvalidRequest, NotFound

from . import metrics
from .canary import CanaryWatch, Verdict
from .clock import Clock
from .stores.keyvalue import KeyValue
from .variants import VariantConfig, Variants, check_variants

_MAX_HISTORY = 10_000
_META = "gw:variants:meta"


_OPTIONAL = (
    "price",
    "canary",
    "shadow",
)  # left out when unset: a YAML from before them keeps its fingerprint


def _dump(variants: Mapping[str, VariantConfig]) -> dict[str, Any]:
    dumped = {name: v.model_dump(mode="json") for name, v in variants.items()}
    for variant in dumped.values():
        for field in _OPTIONAL:
            if variant.get(field) is None:
                variant.pop(field, None)
    return dumped


def _fingerprint(variants: Mapping[str, VariantConfig]) -> str:
    return hashlib.sha256(orjson.dumps(_dump(variants), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class VariantHistory:
    """Changes to ``variants`` (the process's selector), recorded in ``kv``; ``clock``: when they happen and the
    canary windows; ``poll_s``: how often other processes' changes are looked for."""

    def __init__(
        self,
        variants: Variants,
        kv: KeyValue,
        configured: Mapping[str, Mapping[str, VariantConfig]],
        deployments: Mapping[str, list[str]],
        clock: Clock,
        poll_s: float = 1.0,
    ) -> None:
        self.variants = variants
        self._kv = kv
        self._configured = {a: dict(v) for a, v in configured.items() if v}
        self._deployments = deployments
        self._now = clock.time
        self._poll_s = poll_s
        self._version: str | None = None
        self._poller: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._log = structlog.get_logger("gateway.variants")
        self.canary = CanaryWatch(variants, clock, self._roll_back_canary)

    @staticmethod
    def _key(alias: str, what: str) -> str:
        return f"gw:{{v:{alias}}}:{what}"

    async def load(self) -> None:
        """At start (and after a reload): the variants in force from the store, or the YAML's when it changed."""
        for alias, configured in self._configured.items():
            raw = await self._kv.get(self._key(alias, "state"))
            state = orjson.loads(raw) if raw else None
            fingerprint = _fingerprint(configured)
            if state is not None and state.get("yaml") == fingerprint:
                stored = {n: VariantConfig.model_validate(v) for n, v in state["variants"].items()}
                self.variants.replace(alias, stored)
                continue
            before = (
                {n: VariantConfig.model_validate(v) for n, v in state["variants"].items()} if state else {}
            )
            await self._commit(
                alias, "config", "yaml", "the config file's variants", before, configured, fingerprint
            )

    async def start(self) -> None:
        await self.load()
        if self._configured:
            self._version = (await self._kv.hash_get(_META)).get("version")
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        # Stopped between polls, not cancelled inside one (a Redis command cut half-way loses its connection).
        self._stop.set()
        if self._poller is not None:
            await self._poller
        await self.canary.close()

    async def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._poll_s)
                return
            try:
                await self.refresh()
            except Exception as exc:  # a store that fails: keep the variants in force, try again
                self._log.warning("variants refresh failed", error=str(exc))

    async def refresh(self) -> bool:
        """Takes the stored variants of every alias if another process changed any; returns whether it did."""
        version = (await self._kv.hash_get(_META)).get("version")
        if version == self._version:
            return False
        self._version = version
        for alias, configured in self._configured.items():
            raw = await self._kv.get(self._key(alias, "state"))
            state = orjson.loads(raw) if raw else None
            if state is not None and state.get("yaml") == _fingerprint(configured):
                stored = {n: VariantConfig.model_validate(v) for n, v in state["variants"].items()}
                if stored != self.variants.configs(alias):
                    self.variants.replace(alias, stored)
        return True

    async def history(self, alias: str) -> list[dict[str, Any]]:
        self._known(alias)
        return [orjson.loads(item) for item in await self._kv.items(self._key(alias, "history"))]

    def current(self, alias: str) -> dict[str, Any]:
        self._known(alias)
        return _dump(self.variants.configs(alias))

    async def change(
        self, alias: str, who: str, action: str, why: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One admin change: ``add`` (``name``, ``variant``), ``weights`` (``weights``), ``promote``
        (``variant``: all traffic to it), ``rollback``. Returns the history entry."""
        self._known(alias)
        before = self.variants.configs(alias)
        after = dict(before)
        undoes: int | None = None
        if action == "add":
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidRequest("`name` must be the variant's name.", param="name")
            try:
                after[name] = VariantConfig.model_validate(body.get("variant"))
            except ValueError as exc:
                raise InvalidRequest(f"`variant` is not a valid variant: {exc}", param="variant") from exc
        elif action == "weights":
            weights = body.get("weights")
            if not isinstance(weights, dict) or not all(
                isinstance(w, int | float) and w >= 0 for w in weights.values()
            ):
                raise InvalidRequest("`weights` must map variant names to numbers >= 0.", param="weights")
            for name, weight in weights.items():
                if name not in after:
                    raise InvalidRequest(f"No variant {name!r} of `{alias}`.", param="weights")
                after[name] = after[name].model_copy(update={"weight": float(weight)})
        elif action == "promote":
            target = body.get("variant")
            if target not in after:
                raise InvalidRequest(f"No variant {target!r} of `{alias}`.", param="variant")
            after = {
                n: v.model_copy(update={"weight": 100.0 if n == target else 0.0}) for n, v in after.items()
            }
        elif action == "rollback":
            entries = await self.history(alias)
            undone = {e["undoes"] for e in entries if e.get("undoes") is not None}
            last = next(
                (
                    e
                    for e in reversed(entries)
                    if e["action"] != "rollback" and e["seq"] not in undone and e["action"] != "yaml"
                ),
                None,
            )
            if last is None:
                raise InvalidRequest(f"Nothing to roll back for `{alias}`.", param="action")
            after = {n: VariantConfig.model_validate(v) for n, v in last["before"].items()}
            undoes = last["seq"]
        else:
            raise InvalidRequest("`action` must be add, weights, promote or rollback.", param="action")
        problems = check_variants(alias, self._deployments[alias], after)
        if problems:
            raise InvalidRequest("; ".join(problems), param="variant")
        return await self._commit(alias, who, action, why, before, after, await self._yaml_of(alias), undoes)

    async def _yaml_of(self, alias: str) -> str:
        state = await self._kv.get(self._key(alias, "state"))
        return str(orjson.loads(state)["yaml"]) if state else _fingerprint(self._configured[alias])

    async def _roll_back_canary(self, alias: str, candidate: str, verdict: Verdict) -> None:
        """The canary watch's verdict: the candidate's weight to 0, recorded by ``canary`` with the figures."""
        before = self.variants.configs(alias)
        if candidate not in before or before[candidate].weight <= 0:
            return  # already rolled back (or changed) meanwhile
        after = {**before, candidate: before[candidate].model_copy(update={"weight": 0.0})}
        c, s = verdict.figures["candidate"], verdict.figures["stable"]
        if verdict.reason == "error_rate":
            detail = f"error rate {c['error_rate']:.1%} vs {s['error_rate']:.1%} for the stable variant"
        else:
            detail = f"p95 latency {c['p95_s']:.3f} s vs {s['p95_s']:.3f} s for the stable variant"
        why = f"canary {verdict.reason}: {detail} over {c['outcomes']}/{s['outcomes']} outcomes"
        entry = await self._commit(
            alias,
            "canary",
            "canary_rollback",
            why,
            before,
            after,
            await self._yaml_of(alias),
            figures={"reason": verdict.reason, **verdict.figures},
        )
        metrics.CANARY_ROLLBACKS.labels(alias, candidate, verdict.reason).inc()
        self._log.warning(
            "canary rolled back",
            alias=alias,
            variant=candidate,
            reason=verdict.reason,
            why=why,
            seq=entry["seq"],
        )

    async def _commit(
        self,
        alias: str,
        who: str,
        action: str,
        why: str,
        before: Mapping[str, VariantConfig],
        after: Mapping[str, VariantConfig],
        fingerprint: str,
        undoes: int | None = None,
        figures: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "at": self._now(),
            "who": who,
            "action": action,
            "why": why,
            "before": _dump(before),
            "after": _dump(after),
        }
        if undoes is not None:
            entry["undoes"] = undoes
        if figures is not None:
            entry["figures"] = figures
        entry["seq"] = await self._kv.hash_incr(self._key(alias, "seq"), "n")
        await self._kv.append(self._key(alias, "history"), orjson.dumps(entry).decode(), max_len=_MAX_HISTORY)
        await self._kv.set(
            self._key(alias, "state"), orjson.dumps({"yaml": fingerprint, "variants": _dump(after)}).decode()
        )
        self.variants.replace(alias, dict(after))
        await self._kv.hash_incr(_META, "version")
        return entry

    def _known(self, alias: str) -> None:
        if alias not in self._configured:
            raise NotFound(f"The model alias `{alias}` has no variants (or does not exist).", param="alias")
