"""``POST /v1/batch``: many requests in one call to the engine server, answered a line each as each finishes,
each line what the request's own route answers (errors per line)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from local_engine.async_engine import AsyncEngine

from .test_server import serve, tiny_engine  # noqa: F401 - the module's engine fixture

pytestmark = pytest.mark.usefixtures("loop_guard")


@pytest.fixture
async def url(tiny_engine: AsyncEngine) -> AsyncIterator[str]:  # noqa: F811
    runner, base = await serve(tiny_engine)
    yield base
    await runner.cleanup()


def _chat(text: str, tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


async def _single(session: aiohttp.ClientSession, base: str, route: str, body: dict) -> tuple[int, dict]:
    async with session.post(f"{base}{route}", json=body) as r:
        return r.status, await r.json()


def _answer(body: dict) -> Any:
    """What two runs of a greedy request share (not its id, time, nor the tokens the prefix cache held)."""
    if "choices" not in body:
        return body
    usage = {k: v for k, v in body["usage"].items() if k != "prompt_tokens_details"}
    return {**{k: v for k, v in body.items() if k not in ("id", "created")}, "usage": usage}


async def test_many_requests_one_call_lines_as_each_finishes_errors_per_line(url: str) -> None:
    requests: list[dict[str, Any]] = [
        {"custom_id": "long", "url": "/v1/chat/completions", "body": _chat("tell me a long story", 24)},
        {
            "custom_id": "short",
            "url": "/v1/completions",
            "body": {
                "model": "m",
                "prompt": "the quick",
                "max_tokens": 2,
                "temperature": 0,
                "ignore_eos": True,
            },
        },
        {"custom_id": "bad", "url": "/v1/chat/completions", "body": _chat("hello", 4, max_tokens="many")},
        {"custom_id": "where", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}},
        {"custom_id": "stream", "url": "/v1/chat/completions", "body": _chat("hello", 4, stream=True)},
    ]
    ndjson = "".join(json.dumps(r) + "\n" for r in requests)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/batch", data=ndjson) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("application/x-ndjson")
            lines = [json.loads(raw) for raw in (await r.read()).splitlines()]
        order = [line["custom_id"] for line in lines]
        by_id = {line["custom_id"]: line for line in lines}
        assert sorted(order) == sorted(r["custom_id"] for r in requests)
        assert [by_id[r["custom_id"]]["index"] for r in requests] == list(range(len(requests)))
        # as each finished: the refusals at once, the 2-token request before the 24-token one
        assert order.index("short") < order.index("long")
        assert order[-1] == "long"

        for request in requests[:3]:  # each line is what the request's own route answers
            status, body = await _single(session, url, request["url"], request["body"])
            line = by_id[request["custom_id"]]
            assert (line["status"], _answer(line["body"])) == (status, _answer(body))
        assert by_id["bad"]["status"] == 400 and by_id["bad"]["body"]["error"]["param"] == "max_tokens"
        assert by_id["where"]["status"] == 404
        assert (by_id["stream"]["status"], by_id["stream"]["body"]["error"]["param"]) == (400, "stream")

        # a JSON array too; a body that is neither is the whole call's 400
        async with session.post(f"{url}/v1/batch", json=requests[1:2]) as r:
            [line] = [json.loads(raw) for raw in (await r.read()).splitlines()]
        assert (line["custom_id"], line["status"]) == ("short", 200)
        async with session.post(f"{url}/v1/batch", data=b"{not json") as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"

        async with session.get(f"{url}/metrics") as r:
            counts = (await r.json())["http_requests_total"]
        assert counts["/v1/batch"] >= 3 and counts["/v1/chat/completions"] >= 2
