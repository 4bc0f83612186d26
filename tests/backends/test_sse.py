"""The SSE codec: every framing the standard allows, split at any byte, gives the same events."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends import sse

ENDINGS = [b"\n", b"\r\n", b"\r"]

OPENAI_STREAM = [
    sse.Event(
        orjson.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    ),
    sse.Event(orjson.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]})),
    sse.Event(orjson.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo\nthere"}}]})),
    sse.Event(
        orjson.dumps({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    ),
    sse.Event(b"[DONE]"),
]
ANTHROPIC_STREAM = [
    sse.Event(b'{"type":"message_start"}', "message_start"),
    sse.Event(b'{"type":"content_block_delta","delta":{"text":"Hi"}}', "content_block_delta"),
    sse.Event(b"", "ping"),
    sse.Event(b'{"type":"message_stop"}', "message_stop"),
]


def frame(events: list[sse.Event], end: bytes, space: bool = True, comments: bool = False) -> bytes:
    out = b""
    for event in events:
        if comments:
            out += b": keep-alive" + end
        if event.event != "message":
            out += b"event:" + (b" " if space else b"") + event.event.encode() + end
        for line in event.data.split(b"\n"):
            out += b"data:" + (b" " if space or line[:1] == b" " else b"") + line + end
        out += end
    return out


def decode_split(raw: bytes, cuts: list[int]) -> list[sse.Event]:
    decoder = sse.Decoder()
    out: list[sse.Event] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(raw)]:
        out += decoder.feed(raw[start:cut])
        start = cut
    return out + decoder.close()


def test_every_line_ending_and_every_split_point_gives_the_same_events() -> None:
    for events in (OPENAI_STREAM, ANTHROPIC_STREAM):
        for end in ENDINGS:
            for space in (True, False):
                raw = frame(events, end, space, comments=True)
                for cut in range(len(raw) + 1):
                    assert decode_split(raw, [cut]) == events, (end, space, cut)


def test_byte_by_byte() -> None:
    raw = frame(OPENAI_STREAM, b"\r\n")
    assert decode_split(raw, list(range(len(raw)))) == OPENAI_STREAM


def test_events_come_as_soon_as_their_blank_line_arrives() -> None:
    decoder = sse.Decoder()
    assert decoder.feed(b"data: one\r") == []
    assert decoder.feed(b"\n\r") == [sse.Event(b"one")]  # the CR ends the empty line: dispatched at once
    assert decoder.feed(b"\ndata: two\n\n") == [sse.Event(b"two")]  # that LF belongs to the CR, no extra line


def test_fields_per_the_standard() -> None:
    raw = (
        b"\xef\xbb\xbfretry: 1500\nid: 7\nevent: update\ndata\ndata:x\n\n"  # BOM dropped; 'data' alone = ''
        b"id: a\x00b\ndata: keeps id 7\n\n"  # an id with NUL is ignored
        b"retry: 1s\nevent: gone\n\n"  # no data: nothing dispatched
        b"data: plain\n\n"
        b"unknown: field\n:comment\ndata:  two spaces\n\n"
    )
    assert decode_split(raw, []) == [
        sse.Event(b"\nx", "update", "7", 1500),
        sse.Event(b"keeps id 7", "message", "7"),
        sse.Event(b"plain", "message", "7"),
        sse.Event(b" two spaces", "message", "7"),
    ]


def test_a_stream_that_ends_without_its_last_blank_line_still_gives_its_last_event() -> None:
    assert decode_split(b"data: a\n\ndata: b", []) == [sse.Event(b"a"), sse.Event(b"b")]
    assert decode_split(b"data: a\n\ndata: b\r", []) == [sse.Event(b"a"), sse.Event(b"b")]


def test_fields_carry_over_from_earlier_chunks_into_a_whole_data_event() -> None:
    decoder = sse.Decoder()
    assert decoder.feed(b"id: 4\r\nevent: delta\r\n") == []
    assert decoder.feed(b"data:{}\r\n\r\ndata: next\r\n\r\n") == [
        sse.Event(b"{}", "delta", "4"),
        sse.Event(b"next", "message", "4"),
    ]


def test_decode_reads_a_whole_stream_and_events_are_immutable() -> None:
    events = sse.decode(frame(OPENAI_STREAM, b"\r\n", space=False))
    assert events == OPENAI_STREAM and events[-1].done
    with pytest.raises(AttributeError):
        events[0].data = b"changed"  # type: ignore[misc]


def test_writer_round_trips() -> None:
    raw = (
        sse.encode("line one\r\nline two\rthree", event="delta", id="9", retry=10)
        + sse.comment("ping")
        + sse.DONE
    )
    assert decode_split(raw, []) == [
        sse.Event(b"line one\nline two\nthree", "delta", "9", 10),
        sse.Event(b"[DONE]", "message", "9"),
    ]
    assert sse.Event(b"[DONE]").done


_text = st.text(st.characters(exclude_characters="\r\n", codec="utf-8"), max_size=20)
_event = st.builds(
    lambda data, name: sse.Event(data.encode(), name or "message"),
    st.lists(_text, min_size=1, max_size=3).map("\n".join),
    st.one_of(st.none(), st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8)),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event, max_size=6),
    end=st.sampled_from(ENDINGS),
    space=st.booleans(),
    comments=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_property_any_framing_any_split(
    events: list[sse.Event], end: bytes, space: bool, comments: bool, cuts: list[int]
) -> None:
    raw = frame(events, end, space, comments)
    assert decode_split(raw, [c for c in cuts if c <= len(raw)]) == events


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(_event, max_size=6), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8)
)
def test_property_writer_then_reader(events: list[sse.Event], cuts: list[int]) -> None:
    raw = b"".join(sse.encode(e.data, event=e.event) for e in events)
    assert decode_split(raw, [c for c in cuts if c <= len(raw)]) == events
