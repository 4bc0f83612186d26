"""Reading the ledger: usage per tenant over a range of UTC days, grouped by model alias, day, key or
variant (``model`` and ``variant`` in each row; requests served by no variant are not in it), or the records
themselves. Writing it is admission's reservation and settlement (one record per request id)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from typing import Any, Literal

from .stores.base import NANO, Store

GroupBy = Literal["model", "day", "key", "request", "variant", "source"]
GROUPS = (
    "model",
    "day",
    "key",
    "request",
    "variant",
    "source",
)  # source: live requests apart from batch lines
_BY_VARIANT = "v:"  # the aggregates' second set, ``v:metric|alias|variant`` (stores/base.py)
MAX_DAYS = 400
MAX_RECORDS = 10_000
_METRICS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nusd",
    "cache_hits",
    "errors",
    "estimated",
)


def days_between(start: str, end: str) -> list[str]:
    """Every UTC day from ``start`` to ``end`` inclusive (``YYYY-MM-DD``); ValueError names the problem."""
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if last < first:
        raise ValueError("'to' is before 'from'")
    count = (last - first).days + 1
    if count > MAX_DAYS:
        raise ValueError(f"at most {MAX_DAYS} days at once")
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


async def usage(store: Store, tenant: str, days: list[str], group_by: GroupBy) -> list[dict[str, Any]]:
    if group_by == "request":
        start = dt.datetime.fromisoformat(days[0]).replace(tzinfo=dt.UTC).timestamp()
        end = start + len(days) * 86400
        # copies: the memory store hands back its own dicts, which a second report would find changed
        records = [dict(r) for r in await store.records(tenant, start, end, MAX_RECORDS)]
        for record in records:
            record.setdefault("cache_write_tokens", 0)  # records written before the field existed
            record.setdefault("reasoning_tokens", 0)
            record.setdefault("source", "live")
            record["cost_usd"] = record.pop("cost_nusd") / NANO
        return records
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(_METRICS, 0))
    for day, fields in (await store.aggregates(tenant, days)).items():
        for name, value in fields.items():
            metric, alias, key_id = name.split("|", 2)
            if group_by == "source":  # every request counts plainly; a batch line also under ``batch:``
                batch = metric.startswith("batch:")
                metric = metric.removeprefix("batch:")
                if metric in _METRICS:
                    totals[(tenant, "batch" if batch else "live")][metric] += value
                    if batch:
                        totals[(tenant, "live")][metric] -= value
                continue
            if group_by == "variant":
                if not metric.startswith(_BY_VARIANT):
                    continue
                metric, group = metric[len(_BY_VARIANT) :], f"{alias}|{key_id}"  # key_id: the variant here
            else:
                group = {"model": alias, "day": day, "key": key_id}[group_by]
            if metric in _METRICS:  # a counter this version does not know (a newer process wrote it)
                totals[(tenant, group)][metric] += value
    rows = []
    for (name, group), values in sorted(totals.items()):
        if group_by == "source" and not values["requests"]:
            continue
        row: dict[str, Any] = {"tenant": name, group_by: group}
        if group_by == "variant":
            row["model"], row["variant"] = group.split("|", 1)
        row.update({k: v for k, v in values.items() if k != "cost_nusd"})
        row["cost_usd"] = values["cost_nusd"] / NANO
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
