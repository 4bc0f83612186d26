"""Translation overhead of the agents' APIs: gateway CPU per request for ``/v1/responses`` bridged to a
chat-completions upstream and ``/v1/messages`` to an OpenAI-format upstream, next to the chat pass-through
to the same upstream, whole answers and streams; the last column is the ratio to the pass-through (target:
at most 1.5x).

The fake upstreams run in one process, the gateway (one worker) in another (as bench/providers_bench.py);
this process drives each row at a fixed concurrency for a few seconds and reads the gateway's CPU from /proc.

    .venv/bin/python bench/agents_bench.py [--seconds 3] [--concurrency 16] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import provider_gateway  # noqa: E402
from bench.providers_bench import KEY, MESSAGES, config, cpu_seconds, drive  # noqa: E402

ROWS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "openai", "messages": MESSAGES},
    "/v1/responses": {
        "model": "openai",
        "instructions": "Be brief.",
        "input": MESSAGES[1]["content"],
        "store": False,
    },
    "/v1/messages": {"model": "openai", "max_tokens": 100, "system": "Be brief.", "messages": MESSAGES[1:]},
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per row (default 3)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=6, help="turns the routes take, each --seconds/rounds long"
    )
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {KEY}"}
    with provider_gateway(
        config, "agents-bench-", ready=("/v1/chat/completions", ROWS["/v1/chat/completions"]), headers=headers
    ) as (url, gateway):
        for path, body in ROWS.items():  # warm every route once (imports, first-request caches)
            asyncio.run(drive(url, path, body, headers, 1, 0.2))
        print(
            f"{args.concurrency} concurrent, {args.seconds:g} s per row in {args.rounds} turns; gateway: 1 worker, logs off; "
            "upstream: the OpenAI-format fake (chat completions only)\n"
        )
        print("| route | mode | req/s | gateway CPU µs/req | x pass-through | failed |")
        print("|---|---|---|---|---|---|")
        base: dict[bool, float] = {}
        for stream in (False, True):
            # The routes take turns in short slices, so that the other loads of a shared machine (which make
            # each request cost more CPU while they last) weigh on every row alike.
            totals = {path: [0, 0.0, 0] for path in ROWS}  # requests, CPU seconds, failed
            for _ in range(args.rounds):
                for path, body in ROWS.items():
                    before = cpu_seconds(gateway.pid)
                    count, _, failed = asyncio.run(
                        drive(
                            url,
                            path,
                            {**body, "stream": stream},
                            headers,
                            args.concurrency,
                            args.seconds / args.rounds,
                        )
                    )
                    totals[path][0] += count
                    totals[path][1] += cpu_seconds(gateway.pid) - before
                    totals[path][2] += failed
            for path, (requests, cpu, failures) in totals.items():
                micros = cpu / max(requests, 1) * 1e6
                base.setdefault(stream, micros)
                print(
                    f"| `{path}` | {'stream' if stream else 'whole'} | {requests / args.seconds:.0f} | {micros:.0f} | "
                    f"{micros / base[stream]:.2f} | {failures} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
