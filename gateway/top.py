"""``python -m gateway top``: live traffic per tenant and model alias, read from a gateway's ``/metrics``.

Each refresh scrapes ``/metrics`` and compares it with the previous scrape: requests per second and errors per
second over the interval, with totals, tokens, latency percentiles (the histogram bucket each falls in, so an
upper bound) and cache hits since the process started.
"""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass(slots=True)
class Traffic:
    """One tenant's traffic on one alias, as counted since the gateway started."""

    requests: float = 0
    errors: float = 0
    tokens: float = 0
    cache_hits: float = 0
    buckets: dict[float, float] = field(default_factory=dict)  # latency: le (s) -> cumulative count

    def quantile(self, q: float) -> float | None:
        total = self.buckets.get(float("inf"), 0)
        if not total:
            return None
        return next(le for le, count in sorted(self.buckets.items()) if count >= q * total)


def scrape(url: str, timeout_s: float = 5.0) -> tuple[dict[tuple[str, str], Traffic], float]:
    """Every (tenant, alias)'s traffic at ``url``/metrics and the gateway's in-flight requests."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout_s) as response:
        return parse(response.read().decode())


def parse(text: str) -> tuple[dict[tuple[str, str], Traffic], float]:
    traffic: dict[tuple[str, str], Traffic] = defaultdict(Traffic)
    in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            row = (labels.get("tenant", ""), labels.get("alias", ""))
            if sample.name == "gateway_requests_total":
                traffic[row].requests += sample.value
                if labels.get("status", "").startswith(("4", "5")):
                    traffic[row].errors += sample.value
            elif sample.name == "gateway_tokens_total":
                traffic[row].tokens += sample.value
            elif sample.name == "gateway_cache_lookups_total" and labels.get("result", "").startswith("hit"):
                traffic[row].cache_hits += sample.value
            elif sample.name == "gateway_request_duration_seconds_bucket":
                le = float(labels["le"])
                traffic[row].buckets[le] = traffic[row].buckets.get(le, 0) + sample.value
            elif sample.name == "gateway_in_flight_requests":
                in_flight += sample.value
    return dict(traffic), in_flight


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else "inf" if seconds == float("inf") else f"{seconds * 1000:g}"


def table(
    url: str,
    before: dict[tuple[str, str], Traffic],
    now: dict[tuple[str, str], Traffic],
    in_flight: float,
    interval_s: float,
) -> Table:
    """The view: one row per (tenant, alias), busiest first."""
    view = Table(title=f"{url}  in flight: {in_flight:g}  (rates over {interval_s:.1f} s)")
    for name, justify in (
        ("tenant", "left"),
        ("alias", "left"),
        ("req/s", "right"),
        ("err/s", "right"),
        ("requests", "right"),
        ("errors", "right"),
        ("tokens", "right"),
        ("p50 ms ≤", "right"),
        ("p95 ms ≤", "right"),
        ("cache hits", "right"),
    ):
        view.add_column(name, justify=justify)  # type: ignore[arg-type]

    def rate(row: tuple[str, str], what: str) -> float:
        earlier = getattr(before.get(row, Traffic()), what)
        return max(getattr(now[row], what) - earlier, 0) / interval_s

    rows = sorted(
        (r for r in now if now[r].requests), key=lambda r: (-rate(r, "requests"), -now[r].requests, r)
    )
    for row in rows:
        t = now[row]
        view.add_row(
            row[0],
            row[1],
            f"{rate(row, 'requests'):.1f}",
            f"{rate(row, 'errors'):.1f}",
            f"{t.requests:g}",
            f"{t.errors:g}",
            f"{t.tokens:g}",
            _ms(t.quantile(0.5)),
            _ms(t.quantile(0.95)),
            f"{t.cache_hits:g}",
        )
    return view


def run(url: str, interval_s: float, once: bool, console: Console | None = None) -> int:
    """``once``: two scrapes ``interval_s`` apart, one table printed; else a live view until Ctrl-C."""
    console = console or Console()
    before, _ = scrape(url)
    started = time.monotonic()
    if once:
        time.sleep(interval_s)
        now, in_flight = scrape(url)
        console.print(table(url, before, now, in_flight, time.monotonic() - started))
        return 0
    with Live(console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval_s)
                now, in_flight = scrape(url)
                taken = time.monotonic()
                live.update(table(url, before, now, in_flight, taken - started), refresh=True)
                before, started = now, taken
        except KeyboardInterrupt:
            return 0


__all__ = ["Traffic", "parse", "run", "scrape", "table"]
