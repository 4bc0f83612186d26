"""What the security controls add to each request, step by step, in microseconds (median of 7 runs of 20,000
calls each), on objects built the way the gateway builds them: the access middleware's peer and path checks,
the scrubbing and bounding of the request's log line, an error message's scrub, a PII scan of a short prompt.

    PYTHONPATH=. python bench/security_bench.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import make_mocked_request

from backends import UpstreamResponse, sse
from errors import RateLimited
from errors.secrets import known, register
from gateway import logs
from gateway.security.access import allowlist, kind_of
from gateway.security.network import peer_of
from gateway.security.pii import Detector
from gateway.security.streams import StreamScrubber, scrub_whole

CALLS = 20_000


def per_call(step: Callable[[], Any]) -> float:
    runs = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(CALLS):
            step()
        runs.append((time.perf_counter() - started) / CALLS * 1e6)
    return statistics.median(runs)


class _Transport:
    """A socket's transport as uvloop's answers: the peer's address, no TLS."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


def main() -> None:
    register(["sk-" + "x" * 40, "upstream-secret-" + "y" * 24])
    request = make_mocked_request(
        "POST", "/v1/chat/completions", headers={"Authorization": "Bearer gw-abc"}, transport=_Transport()
    )
    no_proxies, proxies = allowlist(()), allowlist(("10.0.0.0/8",))
    line = {
        "request_id": "a1b2c3d4e5f60708000001",
        "tenant": "acme",
        "key_id": "0123456789ab",
        "alias": "chat",
        "deployment": "openai-compatible/gpt-4o-mini",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "stream": False,
        "latency_ms": 12.3,
        "overhead_ms": 0.4,
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "event": "request",
        "level": "info",
        "timestamp": "2026-01-01T00:00:00Z",
    }
    failed = {**line, "status": 502, "error": "upstream openai/gpt-4o-mini returned HTTP 500: internal error"}
    detector = Detector()
    prompt = "Summarise the meeting notes from Tuesday and list three action items for the team. " * 4
    scrubber = StreamScrubber(known())
    delta = sse.Event(
        b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
        b'[{"index":0,"delta":{"content":" the"},"finish_reason":null}]}'
    )
    raw = sse.encode(delta.data)
    held = delta._replace(data=delta.data.replace(b" the", b" sk"))  # ends like a secret's start: kept back
    whole = UpstreamResponse(
        status=200, body=b'{"choices":[{"message":{"content":"' + b"word " * 2000 + b'"}}]}'
    )
    rows = [
        ("(reference: an empty call)", per_call(lambda: None)),
        ("access: peer (no trusted proxies)", per_call(lambda: peer_of(request, no_proxies))),
        ("access: peer (trusted proxies set)", per_call(lambda: peer_of(request, proxies))),
        ("access: path kind", per_call(lambda: kind_of("/v1/chat/completions"))),
        ("log line guard: a 200", per_call(lambda: logs._guard(None, "info", dict(line)))),
        ("log line guard: a 502 with its error", per_call(lambda: logs._guard(None, "info", dict(failed)))),
        ("error made (message scrubbed)", per_call(lambda: RateLimited("Rate limit reached for requests"))),
        ("stream: a chat chunk scrubbed of secrets (per event)", per_call(lambda: scrubber.event(delta))),
        ("stream: a chat chunk whose end is held back, then sent", per_call(lambda: scrubber.event(held))),
        ("stream: (reference: the SSE re-encoding alone)", per_call(lambda: sse.encode(delta.data))),
        ("stream: (reference: decoding the event from its bytes)", per_call(lambda: sse.Decoder().feed(raw))),
        ("a whole 10 KB answer searched for secrets", per_call(lambda: scrub_whole(whole))),
        (
            f"PII scan, {len(prompt)} characters (tenants with pii only)",
            per_call(lambda: detector.find(prompt)),
        ),
    ]
    print("| step | µs per request |\n|---|---|")
    for name, micros in rows:
        print(f"| {name} | {micros:.2f} |")


if __name__ == "__main__":
    main()
