"""What folding a streamed answer's body for the request log costs the relay (gateway/streambody.py).

Each relay write of a stream whose tenant logs bodies is followed by one ``feed`` of the bytes written; the
table gives the CPU µs that adds per event (one token's chunk, as providers send them), next to what decoding
the same bytes as SSE alone costs, and the one-off ``body()`` at the end. Streams of 500 tokens (under the
16 KiB default cap) and of 20,000 (past it: the fold stops keeping text and only reads the envelope).

    python bench/streambody_bench.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backends import sse
from gateway.streambody import ChatBody, MessageBody, ResponseBody, StreamBody

ROOM = 16384 + 256  # request_log.max_body_bytes' default and the masking slack


def chat(tokens: int) -> list[bytes]:
    head: dict[str, object] = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
    }
    head |= {"created": 1741569952, "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_eb9dce56a8"}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

    usage = {
        **head,
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens},
    }
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": " word"}) for _ in range(tokens)),
        chunk({}, "stop"),
        b"data: " + orjson.dumps(usage) + b"\n\n",
        b"data: [DONE]\n\n",
    ]


def responses(tokens: int) -> list[bytes]:
    response: dict[str, object] = {
        "id": "resp_67c9fdcecf488190bdd9a0b7ed1b5f6c",
        "object": "response",
        "status": "in_progress",
    }
    response |= {"model": "gpt-4o-2024-08-06", "output": [], "usage": None}
    item = {
        "id": "msg_67c9fdcf37fc8190ba82116e33fb28c5",
        "type": "message",
        "role": "assistant",
        "content": [],
    }

    def event(kind: str, **data: object) -> bytes:
        return sse.encode(orjson.dumps({"type": kind, **data}), event=kind)

    done = {**item, "status": "completed", "content": [{"type": "output_text", "text": " word" * tokens}]}
    final = {**response, "status": "completed", "output": [done], "usage": {"output_tokens": tokens}}
    return [
        event("response.created", response=response, sequence_number=0),
        event("response.output_item.added", output_index=0, item=item, sequence_number=1),
        *(
            event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=0,
                content_index=0,
                delta=" word",
                sequence_number=2 + i,
            )
            for i in range(tokens)
        ),
        event("response.output_item.done", output_index=0, item=done, sequence_number=tokens + 2),
        event("response.completed", response=final, sequence_number=tokens + 3),
    ]


def messages(tokens: int) -> list[bytes]:
    def event(kind: str, **data: object) -> bytes:
        return sse.encode(orjson.dumps({"type": kind, **data}), event=kind)

    message: dict[str, object] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "content": [],
    }
    message |= {
        "model": "claude-sonnet-4-5",
        "stop_reason": None,
        "usage": {"input_tokens": 9, "output_tokens": 1},
    }
    return [
        event("message_start", message=message),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        *(
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": " word"})
            for _ in range(tokens)
        ),
        event("content_block_stop", index=0),
        event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": tokens}),
        event("message_stop"),
    ]


def timed(run: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` runs, in seconds (the least disturbed by other load)."""
    best = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best.append(time.perf_counter() - start)
    return min(best)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folds: dict[str, tuple[Callable[[int], list[bytes]], Callable[[int], StreamBody]]] = {
        "chat": (chat, ChatBody),
        "responses": (responses, ResponseBody),
        "messages": (messages, MessageBody),
    }
    print(
        f"{'surface':<10} {'tokens':>7} {'SSE decode µs/ev':>17} {'fold µs/ev':>11} {'body() µs':>10} {'body bytes':>11}"
    )
    for name, (events_of, fold_of) in folds.items():
        for tokens in (500, 20_000):
            events = events_of(tokens)

            def decode_only(events: list[bytes] = events) -> None:
                decoder = sse.Decoder()
                for piece in events:
                    decoder.feed(piece)

            def fold(
                events: list[bytes] = events, fold_of: Callable[[int], StreamBody] = fold_of
            ) -> StreamBody:
                body = fold_of(ROOM)
                for piece in events:
                    body.feed(piece)
                return body

            folded = fold()
            last = timed(folded.body, args.repeat)
            kept = len(folded.body() or b"")
            print(
                f"{name:<10} {tokens:>7} {timed(decode_only, args.repeat) / len(events) * 1e6:>17.2f}"
                f" {timed(fold, args.repeat) / len(events) * 1e6:>11.2f} {last * 1e6:>10.1f} {kept:>11}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
