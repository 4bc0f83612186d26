"""Batch lines apart from live traffic: ``/admin/usage?group_by=source`` and the ``gateway_batch_*`` metrics."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import KEY

from .conftest import chat_line, jsonl, upload, wait_for


def _sample(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _usage(url: str, group_by: str) -> list[dict]:
    got = httpx.get(
        url + "/admin/usage", params={"group_by": group_by}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert got.status_code == 200, got.text
    return got.json()["data"]


def test_batch_spend_is_reported_apart_from_live_spend(client, batch_gateway):
    before = httpx.get(batch_gateway.url + "/metrics").text
    for _ in range(2):
        client.chat.completions.create(
            model="flaky", messages=[{"role": "user", "content": "same words"}], max_tokens=16
        )
    lines = [chat_line(f"l{i}", "same words", "flaky") for i in range(3)] + [
        chat_line("bad", "FAIL", "flaky")
    ]
    done = wait_for(
        client,
        client.batches.create(
            input_file_id=upload(client, jsonl(lines)),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id,
    )
    assert done.request_counts.completed == 3

    deadline = time.monotonic() + 20
    while (
        sum(row["requests"] for row in _usage(batch_gateway.url, "source")) < 6
    ):  # settled off the answer's path
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rows = {row["source"]: row for row in _usage(batch_gateway.url, "source")}
    assert set(rows) == {"live", "batch"}
    live, batch = rows["live"], rows["batch"]
    assert (live["requests"], live["errors"]) == (2, 0)
    assert (batch["requests"], batch["errors"]) == (4, 1)
    assert batch["completion_tokens"] == live["completion_tokens"] * 3 / 2  # the same answers, 3 against 2
    assert batch["cost_usd"] == pytest.approx(live["cost_usd"] / 2 * 3 / 2)  # at half the price
    by_model = {row["model"]: row for row in _usage(batch_gateway.url, "model")}
    assert by_model["flaky"]["requests"] == 6  # the other groupings count both, as before
    assert by_model["flaky"]["cost_usd"] == pytest.approx(live["cost_usd"] + batch["cost_usd"])
    records = _usage(batch_gateway.url, "request")
    assert sorted(r["source"] for r in records) == ["batch"] * 4 + ["live"] * 2

    after = httpx.get(batch_gateway.url + "/metrics").text

    def delta(prefix: str) -> float:
        return _sample(after, prefix) - _sample(before, prefix)

    assert delta('gateway_batch_lines_total{alias="flaky",status="200",tenant="acme"}') == 3
    assert delta('gateway_batch_lines_total{alias="flaky",status="500",tenant="acme"}') == 1
    assert delta('gateway_requests_total{alias="flaky",status="200",tenant="acme"}') == 2  # live only
    completion = 'gateway_tokens_total{alias="flaky",kind="completion",tenant="acme"}'
    batch_completion = 'gateway_batch_tokens_total{alias="flaky",kind="completion",tenant="acme"}'
    assert delta(completion) == live["completion_tokens"]
    assert delta(batch_completion) == batch["completion_tokens"]
    assert delta('gateway_batch_cost_usd_total{alias="flaky",tenant="acme"}') == pytest.approx(
        batch["cost_usd"]
    )
    assert delta('gateway_cost_usd_total{alias="flaky",tenant="acme"}') == pytest.approx(
        live["cost_usd"] + batch["cost_usd"]
    )
