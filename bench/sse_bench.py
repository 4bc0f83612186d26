"""Cost of the SSE codec (backends/sse.py) on the stream relay path: decoding an OpenAI stream and writing
each event back in LF framing, as the pipeline's tap does, per framing and per way the bytes arrive.
Prints one markdown table; in-process, one core, a few seconds.

    python bench/sse_bench.py
"""

from __future__ import annotations

import functools
import sys
import timeit
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends import sse

BASE = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "bench"}
WORDS = ["Echo:", *(f" word{i}" for i in range(30))]


def stream(end: bytes, space: bool) -> list[bytes]:
    """An OpenAI chat stream, one event per chunk: role, words, finish, usage, [DONE]."""
    choices = [[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]]
    choices += [[{"index": 0, "delta": {"content": w}, "finish_reason": None}] for w in WORDS]
    choices += [[{"index": 0, "delta": {}, "finish_reason": "stop"}]]
    payloads = [orjson.dumps({**BASE, "choices": c}) for c in choices]
    payloads += [
        orjson.dumps({**BASE, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 31}}),
        b"[DONE]",
    ]
    prefix = b"data: " if space else b"data:"
    return [prefix + p + end + end for p in payloads]


def relay(chunks: list[bytes]) -> None:
    decoder = sse.Decoder()
    for chunk in chunks:
        for event in decoder.feed(chunk):
            sse.encode(event.data, event.event)
    decoder.close()


def main() -> None:
    rows: list[tuple[str, float, float, float]] = []
    for name, end, space in (
        ("LF", b"\n", True),
        ("LF, data:x", b"\n", False),
        ("CRLF", b"\r\n", True),
        ("CR", b"\r", True),
    ):
        chunks = stream(end, space)
        whole = [b"".join(chunks)]
        split = [b for c in chunks for b in (c[: len(c) // 2], c[len(c) // 2 :])]
        cells = []
        for pieces in (chunks, whole, split):
            runs = timeit.repeat(functools.partial(relay, pieces), number=2000, repeat=5)
            cells.append(min(runs) / 2000 / len(chunks) * 1e6)
        rows.append((name, cells[0], cells[1], cells[2]))
    count = len(stream(b"\n", True))
    print(f"Decode + re-encode per event ({count} events, Python {sys.version.split()[0]}), µs; min of 5:\n")
    print("| framing | one event per chunk | whole stream in one chunk | each event split in two |")
    print("|---|---:|---:|---:|")
    for name, a, b, c in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {c:.2f} |")


if __name__ == "__main__":
    main()
