"""Server-sent events, read and written as the WHATWG HTML standard defines them ("Server-sent events",
the event stream interpretation): the one codec every stream reader and writer of the gateway uses.

Reading (``Decoder``): lines end with LF, CRLF or a lone CR, and a CRLF split across two chunks is one line
end; ``field: value`` loses one leading space, ``field:value`` and ``field`` alone are fields too; ``data``
lines accumulate joined by LF; ``event`` names the event (``message`` when absent); ``id`` without a NUL sets
the last event id; ``retry`` with ASCII digits only sets the reconnection time; a line starting with ``:`` is a
comment; an empty line dispatches the event if it has data; a leading byte-order mark is dropped. Chunks may
be split at any byte. At the end of a stream, an event whose blank line never came is still dispatched by
``close()`` (the standard drops it; upstreams that omit the last blank line are common enough to forgive).

Writing (``encode``, ``data``): LF line ends; data holding line breaks becomes several ``data`` lines.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import NamedTuple

__all__ = ["DONE", "Decoder", "Event", "comment", "data", "decode", "encode", "events"]

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class Event(NamedTuple):
    """One dispatched event: ``data`` is the UTF-8 bytes of its data lines joined by LF.

    Immutable; a named tuple rather than a frozen dataclass because one is built per event on the stream
    hot path, where a frozen dataclass's ``__init__`` costs twice as much."""

    data: bytes
    event: str = "message"
    id: str | None = None  # the last event id in force when this event was dispatched
    retry: int | None = None  # a reconnection time (ms) set by this event's block

    @property
    def done(self) -> bool:
        """OpenAI's end-of-stream sentinel, ``data: [DONE]``."""
        return self.data == b"[DONE]"


_new = tuple.__new__  # builds an Event without NamedTuple's Python-level __new__: one per event


class Decoder:
    """Incremental event-stream parser: ``feed`` the bytes as they arrive, ``close`` at the end."""

    __slots__ = ("_buf", "_data", "_event", "_retry", "_skip_lf", "_started", "last_event_id")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event = ""
        self._retry: int | None = None
        self._skip_lf = False
        self._started = False
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk`` (possibly none)."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        if 13 in buf:  # a CR (an int: bytes.__contains__ then is one memchr): CRLF or CR line ends
            if buf.endswith(b"\r"):
                self._skip_lf = True  # the LF of a CRLF may be the next chunk's first byte
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return self._lines(buf) if self._data else self._blocks(buf)

    def _lines(self, buf: bytes) -> list[Event]:
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out: list[Event] = []
        data = self._data
        for line in lines:
            if line[:6] == b"data: ":  # the common line, read without the general field parsing
                data.append(line[6:])
            elif line:
                self._line(line)
            elif data:
                out.append(self._dispatch())
            else:
                self._event, self._retry = "", None
        return out

    def _blocks(self, buf: bytes) -> list[Event]:
        # The common case, no event left open: one split per chunk, and an event that is a single ``data``
        # line (every OpenAI chunk) taken whole; any other block goes through the lines.
        blocks = buf.split(b"\n\n")
        self._buf = b""
        tail = blocks.pop()
        out: list[Event] = []
        for block in blocks:
            if block[:5] == b"data:" and 10 not in block:
                value = block[6:] if block[5:6] == b" " else block[5:]
                out.append(_new(Event, (value, self._event or "message", self.last_event_id, self._retry)))
                self._event, self._retry = "", None
            else:
                out.extend(self._lines(block + b"\n\n"))
        if tail:
            out.extend(self._lines(tail))
        return out

    def close(self) -> list[Event]:
        """End of stream: a trailing line without its line end is read, and an event still open dispatched."""
        return self.feed(b"\n\n") if self._buf or self._data else []

    def _line(self, line: bytes) -> None:
        if line[:1] == b":":
            return
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        elif field == b"id":
            if b"\0" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif field == b"retry":
            if value.isdigit():
                self._retry = int(value)

    def _dispatch(self) -> Event:
        lines = self._data
        event = _new(
            Event,
            (
                lines[0] if len(lines) == 1 else b"\n".join(lines),
                self._event or "message",
                self.last_event_id,
                self._retry,
            ),
        )
        lines.clear()
        self._event, self._retry = "", None
        return event


async def events(chunks: AsyncIterable[bytes]) -> AsyncIterator[Event]:
    """The events of a byte stream, each as soon as its blank line has arrived."""
    decoder = Decoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event


def decode(raw: bytes) -> list[Event]:
    """The events of a whole stream held in memory."""
    decoder = Decoder()
    return decoder.feed(raw) + decoder.close()


def data(payload: bytes) -> bytes:
    """One unnamed event whose data is ``payload`` (which holds no line break, as orjson's output never does)."""
    return b"data: " + payload + b"\n\n"


DONE = data(b"[DONE]")


def encode(
    payload: bytes | str, event: str | None = None, id: str | None = None, retry: int | None = None
) -> bytes:
    """One event; data with line breaks (LF, CRLF or CR) is written as several ``data`` lines."""
    if isinstance(payload, str):
        payload = payload.encode()
    if 10 in payload or 13 in payload:
        body = b"".join(b"data: " + line + b"\n" for line in _LINE_END.split(payload)) + b"\n"
    else:
        body = b"data: " + payload + b"\n\n"
    if (event is None or event == "message") and id is None and retry is None:
        return body
    head = b""
    if event is not None and event != "message":
        head += b"event: " + _field(event) + b"\n"
    if id is not None:
        head += b"id: " + _field(id) + b"\n"
    if retry is not None:
        head += b"retry: " + str(int(retry)).encode() + b"\n"
    return head + body


def comment(text: str = "") -> bytes:
    """A comment line (keep-alive): readers ignore it."""
    return b":" + (b" " + _field(text) if text else b"") + b"\n\n"


def _field(value: str) -> bytes:
    raw = value.encode()
    if b"\n" in raw or b"\r" in raw:
        raise ValueError("an SSE field value cannot hold a line break")
    return raw
