"""The fleet's prefix-cache hit rate with prefix-aware routing (backends/prefix_ring.py) vs random and
round-robin routing, on the engine's own KV block manager (one per simulated worker).

Requests share a few long system prompts (Zipf-distributed popularity) and differ in their user turns;
``--window`` requests are in flight at once (their blocks held), so the load bound matters. No model runs:
what is measured is which prompt blocks each worker's prefix cache already holds when a request arrives.

    .venv/bin/python -m bench.prefix_routing_bench [--workers 4] [--requests 2000] [--prompts 32]
"""

from __future__ import annotations

import argparse
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from backends.prefix_ring import PrefixRing, prompt_prefix
from local_engine.block_manager import BlockManager
from local_engine.sampling_params import SamplingParams
from local_engine.sequence import Sequence

BLOCK = 16


@dataclass(eq=False)
class SimWorker:
    name: str
    blocks: BlockManager
    inflight: int = 0


def workload(args: argparse.Namespace, rng: random.Random) -> list[tuple[dict[str, Any], list[int]]]:
    prompts = [[rng.randrange(1000, 30000) for _ in range(args.system_tokens)] for _ in range(args.prompts)]
    weights = [1 / (k + 1) ** args.zipf for k in range(args.prompts)]
    out = []
    for i in range(args.requests):
        k = rng.choices(range(args.prompts), weights)[0]
        text = f"You are assistant number {k}. " * 20  # what the gateway hashes: the prompt's text
        payload = {
            "messages": [{"role": "system", "content": text}, {"role": "user", "content": f"question {i}"}]
        }
        tokens = prompts[k] + [rng.randrange(1000, 30000) for _ in range(args.user_tokens)]
        out.append((payload, tokens))
    return out


def run(
    policy: str, requests: list[tuple[dict[str, Any], list[int]]], args: argparse.Namespace
) -> list[float]:
    rng = random.Random(1)
    workers = [SimWorker(f"w{i}", BlockManager(args.kv_blocks, BLOCK)) for i in range(args.workers)]
    ring = PrefixRing()
    for w in workers:
        ring.add(w)
    held: deque[tuple[SimWorker, Sequence]] = deque()
    params = SamplingParams(max_tokens=1)
    for n, (payload, tokens) in enumerate(requests):
        if policy == "prefix":
            worker = ring.pick(prompt_prefix(payload), workers)
        elif policy == "random":
            worker = rng.choice(workers)
        else:
            worker = workers[n % len(workers)]
        seq = Sequence(str(n), tokens, params)
        while not worker.blocks.allocate(seq, token_budget=len(tokens)):
            if not held:
                raise SystemExit("--kv-blocks too small for one request")
            done_worker, done = held.popleft()  # the oldest request finishes, freeing its blocks
            done_worker.blocks.free(done)
            done_worker.inflight -= 1
        seq.num_computed_tokens = len(tokens)
        worker.blocks.commit(seq)
        worker.inflight += 1
        held.append((worker, seq))
        if len(held) > args.window:
            done_worker, done = held.popleft()
            done_worker.blocks.free(done)
            done_worker.inflight -= 1
    hits = sum(w.blocks.prefix_hits for w in workers)
    queries = sum(w.blocks.prefix_queries for w in workers)
    counts = [w.blocks.prefix_queries for w in workers]
    return [hits / queries, max(counts) / (sum(counts) / len(counts))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=32, help="distinct system prompts")
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity skew of the system prompts")
    parser.add_argument("--system-tokens", type=int, default=512)
    parser.add_argument("--user-tokens", type=int, default=64)
    parser.add_argument("--kv-blocks", type=int, default=512, help="KV blocks per worker")
    parser.add_argument("--window", type=int, default=16, help="requests in flight across the fleet")
    args = parser.parse_args()
    requests = workload(args, random.Random(0))
    print(
        f"{args.workers} workers × {args.kv_blocks} blocks of {BLOCK}, {args.requests} requests over "
        f"{args.prompts} system prompts of {args.system_tokens} tokens (Zipf {args.zipf}), {args.window} in flight\n"
    )
    print("| routing | fleet prefix-cache hit rate | busiest worker / mean (prompt tokens) |")
    print("|---|---|---|")
    for policy in ("random", "round-robin", "prefix"):
        rate, skew = run(policy, requests, args)
        print(f"| {policy} | {rate:.1%} | {skew:.2f} |")


if __name__ == "__main__":
    main()
