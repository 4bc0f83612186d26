"""Per-request CPU cost of variant selection (policies/variants.py), of each context policy
(policies/context.py) on a conversation of about 100k tokens fitted into a 16k window, with a real tokenizer
(gpt-4o-mini's BPE) and with the estimate, of the embeddings chunk policy (chunking.py) on a ~100k-token input,
and of the canary watch per outcome (canary.py). Prints one markdown table; in-process, one core, about a
minute.

    nice -n 10 python bench/variants_bench.py
"""

from __future__ import annotations

import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends import DeploymentConfig, Endpoint, SessionPool, build_backend
from policies import chunking
from policies.call import Call
from policies.canary import CanaryWatch
from policies.clock import ManualClock
from policies.context import ContextConfig, ContextPolicies
from policies.record import RequestRecord
from policies.router import Route, Router
from policies.tokens import encoding_for
from policies.variants import CanaryConfig, VariantConfig, Variants

WINDOW = 16_000


def conversation(rounds: int) -> list[dict[str, Any]]:
    """System prompt, then rounds of user -> tool call -> tool result -> answer; then the last user turn."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful analyst. " * 20}]
    for r in range(rounds):
        messages.append({"role": "user", "content": f"Round {r}: summarise section {r} of the report. " * 8})
        call = {
            "id": f"call_{r}",
            "type": "function",
            "function": {"name": "read", "arguments": f'{{"s": {r}}}'},
        }
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append(
            {
                "role": "tool",
                "tool_call_id": f"call_{r}",
                "content": f"Section {r}: revenue grew {r % 17} percent while costs fell. " * 30,
            }
        )
        messages.append({"role": "assistant", "content": f"Section {r} shows growth and lower costs. " * 10})
    messages.append({"role": "user", "content": "Now compare all sections."})
    return messages


def one_long_message(words: int) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "Summarise."},
        {"role": "user", "content": " ".join(f"token{i % 977} value {i}." for i in range(words))},
    ]


def per_call_ms(
    policies: ContextPolicies, config: ContextConfig, messages: list[dict[str, Any]], runs: int
) -> tuple[float, str]:
    best = float("inf")
    header = "-"
    for _ in range(runs):
        call = Call(
            record=RequestRecord("r", 0.0, "chat"),
            tenant="t",
            key_id="k",
            alias="chat",
            endpoint=Endpoint.CHAT,
            body={"model": "chat", "messages": list(messages), "max_tokens": 500},
            stream=False,
        )
        start = time.process_time()
        try:
            policies._fit(call, config)
        except Exception as exc:  # reject: the refusal is the result
            header = type(exc).__name__
        best = min(best, time.process_time() - start)
        header = call.record.response_headers.get("x-gateway-context-truncated", header)
    return best * 1000, header


def main() -> None:
    pool = SessionPool()
    rows = []
    for model, counting in (("gpt-4o-mini", "BPE"), ("unknown-model", "estimate")):
        deployment = DeploymentConfig(
            provider="openai-compatible", model=model, api_base="http://127.0.0.1:9/v1", context_window=WINDOW
        )
        router = Router({"chat": [Route.of("chat", deployment, build_backend(deployment, pool))]}, {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            policies = ContextPolicies(router, {"chat": ContextConfig()}, {})
        for policy, messages, shape in (
            ("fallback", conversation(150), "150 rounds with tools"),
            ("reject", conversation(150), "150 rounds with tools"),
            ("truncate_oldest", conversation(150), "150 rounds with tools"),
            ("truncate_middle", one_long_message(15_000), "one long message"),
        ):
            ms, result = per_call_ms(policies, ContextConfig(policy=policy), messages, runs=3)  # type: ignore[arg-type]
            rows.append((f"context {policy}", f"{shape}, {counting}", f"{ms:.1f} ms", result))

    variants = Variants(
        {
            "chat": {
                "stable": VariantConfig(deployments=("a",), weight=90),
                "candidate": VariantConfig(
                    deployments=("b",),
                    weight=10,
                    system_prompt="You are the candidate.",
                    params={"temperature": 0.2},
                ),
            }
        },
        {},
        random.Random(1),
    )
    for label, user in (("random", None), ("sticky by user", "user-1234")):
        n = 20_000
        calls = [
            Call(
                record=RequestRecord("r", 0.0, "chat"),
                tenant="t",
                key_id="k",
                alias="chat",
                endpoint=Endpoint.CHAT,
                stream=False,
                body={
                    "model": "chat",
                    "messages": [{"role": "user", "content": "hi"}],
                    **({"user": user} if user else {}),
                },
            )
            for _ in range(n)
        ]
        start = time.process_time()
        for call in calls:
            variants.choose(call)
        us = (time.process_time() - start) / n * 1e6
        rows.append((f"variant choice, {label}", "2 variants", f"{us:.2f} µs", "-"))

    rows.extend(chunk_rows())
    rows.append(canary_row())

    print("| what | input | CPU per request | result |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def chunk_rows() -> list[tuple[str, str, str, str]]:
    """Splitting a ~100k-token input into 8,191-token chunks, and combining 1,536-dimension chunk vectors."""
    text = " ".join(f"token{i % 977} value {i}." for i in range(25_000))
    rows = []
    for label, encoding in (("BPE (cl100k)", encoding_for("text-embedding-3-small")), ("estimate", None)):
        start = time.process_time()
        planned = chunking.split([text], 8191, 64, encoding, 0.1)
        split_ms = (time.process_time() - start) * 1000
        assert planned is not None
        sent, plan = planned
        data = {
            "data": [
                {"object": "embedding", "index": i, "embedding": [random.random() for _ in range(1536)]}
                for i in range(len(sent))
            ]
        }
        start = time.process_time()
        chunking.combine(plan, data)
        combine_ms = (time.process_time() - start) * 1000
        rows.append(
            (
                "embeddings chunk: split",
                f"one input of ~100k tokens, {label}",
                f"{split_ms:.1f} ms",
                f"{len(sent)} chunks",
            )
        )
        rows.append(
            ("embeddings chunk: combine", f"{len(sent)} vectors of 1536", f"{combine_ms:.1f} ms", "-")
        )
    return rows


def canary_row() -> tuple[str, str, str, str]:
    """The canary watch's cost per outcome with both windows full (4,096 outcomes each), judged every time."""
    variants = Variants(
        {
            "chat": {
                "v1": VariantConfig(deployments=("a",), weight=90),
                "v2": VariantConfig(
                    deployments=("b",),
                    weight=10,
                    canary=CanaryConfig(stable="v1", error_rate_margin=1.0, latency_margin=100),
                ),
            }
        },
        {},
    )

    async def never(alias: str, candidate: str, verdict: Any) -> None:
        raise AssertionError("no rollback expected")

    watch = CanaryWatch(variants, ManualClock(0.0), never)
    rng = random.Random(1)
    for i in range(8192):
        watch.observe("chat", "v1" if i % 2 else "v2", rng.random() > 0.01, rng.random() / 10)
    n = 2_000
    start = time.process_time()
    for i in range(n):
        watch.observe("chat", "v1" if i % 2 else "v2", True, 0.05)
    us = (time.process_time() - start) / n * 1e6
    return ("canary watch, per outcome", "2 windows of 4,096 outcomes", f"{us:.0f} µs", "-")


if __name__ == "__main__":
    main()
