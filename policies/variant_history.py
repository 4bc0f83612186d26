"""Version control of an alias's variants: every change (a YAML change seen at start, or the admin API's
add, weights, promote, rollback) is kept in the store layer with who, when, what and why, and the variants
it left in force are what the gateway uses after a restart or a reload.

Keys (on the store layer's key/value surface, one hash tag per alias): ``gw:{v:ALIAS}:state`` the variants
in force and the fingerprint of the YAML they derive from; ``gw:{v:ALIAS}:history`` the changes, oldest
first, each JSON ``{"seq", "at", "who", "action", "why", "before", "after", "undoes"?}``.

A YAML whose variants differ from the fingerprint stored wins over the stored state (an operator edited the
file) and is recorded as a change by ``config``. Rollback restores the variants before the newest change not
already rolled back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from errors import InvalidRequest, NotFound

from .stores.keyvalue import KeyValue
from .variants import VariantConfig, Variants, check_variants

_MAX_HISTORY = 10_000


def _dump(variants: Mapping[str, VariantConfig]) -> dict[str, Any]:
    return {name: v.model_dump(mode="json") for name, v in variants.items()}


def _fingerprint(variants: Mapping[str, VariantConfig]) -> str:
    return hashlib.sha256(orjson.dumps(_dump(variants), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class VariantHistory:
    """Changes to ``variants`` (the process's selector), recorded in ``kv``. ``now``: the wall clock (s)."""

    def __init__(self, variants: Variants, kv: KeyValue, configured: Mapping[str, Mapping[str, VariantConfig]],
                 deployments: Mapping[str, list[str]], now: Callable[[], float]) -> None:
        self.variants = variants
        self._kv = kv
        self._configured = {a: dict(v) for a, v in configured.items() if v}
        self._deployments = deployments
        self._now = now

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
            before = {n: VariantConfig.model_validate(v) for n, v in state["variants"].items()} if state else {}
            await self._commit(alias, "config", "yaml", "the config file's variants", before, configured,
                               fingerprint)

    async def history(self, alias: str) -> list[dict[str, Any]]:
        self._known(alias)
        return [orjson.loads(item) for item in await self._kv.items(self._key(alias, "history"))]

    def current(self, alias: str) -> dict[str, Any]:
        self._known(alias)
        return _dump(self.variants.configs(alias))

    async def change(self, alias: str, who: str, action: str, why: str, body: Mapping[str, Any]) -> dict[str, Any]:
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
            if not isinstance(weights, dict) or not all(isinstance(w, int | float) and w >= 0 for w in weights.values()):
                raise InvalidRequest("`weights` must map variant names to numbers >= 0.", param="weights")
            for name, weight in weights.items():
                if name not in after:
                    raise InvalidRequest(f"No variant {name!r} of `{alias}`.", param="weights")
                after[name] = after[name].model_copy(update={"weight": float(weight)})
        elif action == "promote":
            target = body.get("variant")
            if target not in after:
                raise InvalidRequest(f"No variant {target!r} of `{alias}`.", param="variant")
            after = {n: v.model_copy(update={"weight": 100.0 if n == target else 0.0}) for n, v in after.items()}
        elif action == "rollback":
            entries = await self.history(alias)
            undone = {e["undoes"] for e in entries if e.get("undoes") is not None}
            last = next((e for e in reversed(entries) if e["action"] != "rollback" and e["seq"] not in undone
                         and e["action"] != "yaml"), None)
            if last is None:
                raise InvalidRequest(f"Nothing to roll back for `{alias}`.", param="action")
            after = {n: VariantConfig.model_validate(v) for n, v in last["before"].items()}
            undoes = last["seq"]
        else:
            raise InvalidRequest("`action` must be add, weights, promote or rollback.", param="action")
        problems = check_variants(alias, self._deployments[alias], after)
        if problems:
            raise InvalidRequest("; ".join(problems), param="variant")
        state = await self._kv.get(self._key(alias, "state"))
        fingerprint = orjson.loads(state)["yaml"] if state else _fingerprint(self._configured[alias])
        return await self._commit(alias, who, action, why, before, after, fingerprint, undoes)

    async def _commit(self, alias: str, who: str, action: str, why: str, before: Mapping[str, VariantConfig],
                      after: Mapping[str, VariantConfig], fingerprint: str, undoes: int | None = None
                      ) -> dict[str, Any]:
        entry: dict[str, Any] = {"at": self._now(), "who": who, "action": action, "why": why,
                                 "before": _dump(before), "after": _dump(after)}
        if undoes is not None:
            entry["undoes"] = undoes
        entry["seq"] = await self._kv.hash_incr(self._key(alias, "seq"), "n")
        await self._kv.append(self._key(alias, "history"), orjson.dumps(entry).decode(), max_len=_MAX_HISTORY)
        await self._kv.set(self._key(alias, "state"),
                           orjson.dumps({"yaml": fingerprint, "variants": _dump(after)}).decode())
        self.variants.replace(alias, dict(after))
        return entry

    def _known(self, alias: str) -> None:
        if alias not in self._configured:
            raise NotFound(f"The model alias `{alias}` has no variants (or does not exist).", param="alias")
