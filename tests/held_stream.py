"""Reading a stream that the fake upstream holds at its gate (``FakeState.hold_after``): what reached the
client while the upstream had not yet sent the rest. No timing: the SDK's read timeout is the deadline."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests.fakes.openai_upstream import FakeState

LINE_ENDS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def read_held(stream: Iterable[Any], state: FakeState) -> list[Any]:
    """The chunks of ``stream``: those up to its first text while the upstream waits at its gate, then
    (gate opened) the rest."""
    chunks = iter(stream)
    got: list[Any] = []
    while not any(c.choices and c.choices[0].delta.content for c in got):
        got.append(next(chunks))
    # The client has text while the upstream sits at its gate, its stream not yet finished.
    assert state.hold_after is not None and state.events_sent == state.hold_after
    assert state.completed_streams == 0
    state.release.set()
    got.extend(chunks)
    return got


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
