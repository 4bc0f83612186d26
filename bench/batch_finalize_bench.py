"""Batches: how long finalizing takes (the output and error files written in line order) with the state on
Redis: the lines' answers are read from the store while the files are written.

A real redis-server on loopback (tests/redis_server.py), the runner's own ``_finalize`` on a batch whose lines
all have an answer (10% of them errors); prints seconds, lines/s and the Redis commands it took.

    .venv/bin/python bench/batch_finalize_bench.py [--lines 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.batch_runner import BatchRunner  # noqa: E402
from gateway.batches import Batches  # noqa: E402
from gateway.blobs import LocalBlobs  # noqa: E402
from gateway.config import BatchesConfig, FilesConfig  # noqa: E402
from gateway.files import Files  # noqa: E402
from policies.clock import SYSTEM  # noqa: E402
from policies.stored_responses import StoredResponses  # noqa: E402
from policies.stores.keyvalue import RedisKeyValue  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def _line(i: int) -> bytes:
    return (
        orjson.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "chat", "messages": [{"role": "user", "content": f"line {i}"}]},
            }
        )
        + b"\n"
    )


def _out(i: int) -> str:
    status = 500 if i % 10 == 0 else 200
    body = {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "model": "chat",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"answer {i} " * 8},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 16},
    }
    return orjson.dumps(
        {
            "id": f"batch_req_{i}",
            "custom_id": f"r{i}",
            "error": None,
            "response": {"status_code": status, "request_id": f"req_{i}", "body": body},
        }
    ).decode()


async def _commands(client: redis.Redis) -> int:
    return int((await client.info("stats"))["total_commands_processed"])


class Counted:
    """The key/value store, counting its calls: each is one round trip to Redis."""

    def __init__(self, kv: RedisKeyValue) -> None:
        self.kv, self.calls = kv, 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.kv, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await method(*args, **kwargs)

        return counted


async def run(lines: int, repeat: int) -> list[tuple[float, int, int]]:
    server = RedisServer()
    client = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    kv = Counted(RedisKeyValue(lambda: client))
    try:
        with tempfile.TemporaryDirectory() as root:
            files = Files(kv, LocalBlobs(root), FilesConfig(dir=root), SYSTEM)
            batches = Batches(kv, BatchesConfig(), SYSTEM)
            runner = BatchRunner(lambda: None, batches, files, BatchesConfig(), StoredResponses(kv, 60))  # type: ignore[arg-type,return-value]

            async def content() -> AsyncIterator[bytes]:
                for start in range(0, lines, 1000):
                    yield b"".join(_line(i) for i in range(start, min(start + 1000, lines)))

            results = []
            for _ in range(repeat):
                record = await files.create("acme", "in.jsonl", "batch", content())
                fields = await batches.create("acme", "key", "/v1/chat/completions", record["id"], None)
                batch_id = fields["id"]
                async with client.pipeline(transaction=False) as pipe:  # every line answered (not timed)
                    for i in range(lines):
                        pipe.set(f"batch:{batch_id}:out:{i}", _out(i), ex=3600)
                    await pipe.execute()
                await batches.update(batch_id, total=str(lines), status="in_progress")
                fields = await batches.fields(batch_id)
                before, kv.calls = await _commands(client), 0
                started = time.perf_counter()
                await runner._finalize(fields, "completed")
                seconds = time.perf_counter() - started
                commands = await _commands(client) - before - 1  # less the INFO itself
                trips = kv.calls
                done = await batches.fields(batch_id)
                assert done["status"] == "completed" and int(done["completed"]) + int(done["failed"]) == lines
                results.append((seconds, trips, commands))
            return results
    finally:
        await client.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(run(args.lines, args.repeat))
    best = min(results)
    print(
        f"| batch lines | finalize seconds (best of {args.repeat}) | lines/s | round trips | Redis commands |"
    )
    print("|---:|---:|---:|---:|---:|")
    print(f"| {args.lines} | {best[0]:.2f} | {args.lines / best[0]:.0f} | {best[1]} | {best[2]} |")


if __name__ == "__main__":
    main()
