"""Per-request CPU cost of variant selection (policies/variants.py) and of each context policy
(policies/context.py) on a conversation of about 100k tokens fitted into a 16k window, with a real tokenizer
(gpt-4o-mini's BPE) and with the estimate. Prints one markdown table; in-process, one core, about a minute.

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
from policies.call import Call
from policies.context import ContextConfig, ContextPolicies
from policies.record import RequestRecord
from policies.router import Route, Router
from policies.variants import VariantConfig, Variants

WINDOW = 16_000


def conversation(rounds: int) -> list[dict[str, Any]]:
    """System prompt, then rounds of user -> tool call -> tool result -> answer; then the last user turn."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful analyst. " * 20}]
    for r in range(rounds):
        messages.append({"role": "user", "content": f"Round {r}: summarise section {r} of the report. " * 8})
        call = {"id": f"call_{r}", "type": "function", "function": {"name": "read", "arguments": f'{{"s": {r}}}'}}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"call_{r}",
                         "content": f"Section {r}: revenue grew {r % 17} percent while costs fell. " * 30})
        messages.append({"role": "assistant", "content": f"Section {r} shows growth and lower costs. " * 10})
    messages.append({"role": "user", "content": "Now compare all sections."})
    return messages


def one_long_message(words: int) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Summarise."},
            {"role": "user", "content": " ".join(f"token{i % 977} value {i}." for i in range(words))}]


def per_call_ms(policies: ContextPolicies, config: ContextConfig, messages: list[dict[str, Any]],
                runs: int) -> tuple[float, str]:
    best = float("inf")
    header = "-"
    for _ in range(runs):
        call = Call(record=RequestRecord("r", 0.0, "chat"), tenant="t", key_id="k", alias="chat",
                    endpoint=Endpoint.CHAT, body={"model": "chat", "messages": list(messages), "max_tokens": 500},
                    stream=False)
        start = time.process_time()
        try:
            policies._fit(call, config)
        except Exception as exc:   # reject: the refusal is the result
            header = type(exc).__name__
        best = min(best, time.process_time() - start)
        header = call.record.response_headers.get("x-gateway-context-truncated", header)
    return best * 1000, header


def main() -> None:
    pool = SessionPool()
    rows = []
    for model, counting in (("gpt-4o-mini", "BPE"), ("unknown-model", "estimate")):
        deployment = DeploymentConfig(provider="openai-compatible", model=model, api_base="http://127.0.0.1:9/v1",
                                      context_window=WINDOW)
        router = Router({"chat": [Route.of("chat", deployment, build_backend(deployment, pool))]}, {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            policies = ContextPolicies(router, {"chat": ContextConfig()}, {})
        for policy, messages, shape in (
                ("fallback", conversation(150), "150 rounds with tools"),
                ("reject", conversation(150), "150 rounds with tools"),
                ("truncate_oldest", conversation(150), "150 rounds with tools"),
                ("truncate_middle", one_long_message(15_000), "one long message")):
            ms, result = per_call_ms(policies, ContextConfig(policy=policy), messages, runs=3)  # type: ignore[arg-type]
            rows.append((f"context {policy}", f"{shape}, {counting}", f"{ms:.1f} ms", result))

    variants = Variants({"chat": {"stable": VariantConfig(deployments=("a",), weight=90),
                                  "candidate": VariantConfig(deployments=("b",), weight=10,
                                                             system_prompt="You are the candidate.",
                                                             params={"temperature": 0.2})}}, {},
                        random.Random(1))
    for label, user in (("random", None), ("sticky by user", "user-1234")):
        n = 20_000
        calls = [Call(record=RequestRecord("r", 0.0, "chat"), tenant="t", key_id="k", alias="chat",
                      endpoint=Endpoint.CHAT, stream=False,
                      body={"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                            **({"user": user} if user else {})}) for _ in range(n)]
        start = time.process_time()
        for call in calls:
            variants.choose(call)
        us = (time.process_time() - start) / n * 1e6
        rows.append((f"variant choice, {label}", "2 variants", f"{us:.2f} µs", "-"))

    print("| what | input | CPU per request | result |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
