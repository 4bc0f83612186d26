"""The client's W3C ``tracestate``, checked before it goes upstream next to ``traceparent``.

W3C Trace Context, section 3.3: a comma-separated list of ``key=value`` members (optional spaces and tabs
around each, empty members allowed and dropped); a key is ``lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*"
/ "/")`` or a multi-tenant ``tenant@system`` key (tenant up to 241 characters starting with a letter or
digit, system up to 14 starting with a letter); a value is 1 to 256 printable ASCII characters but ``,``
and ``=``, not ending in a space; keys are unique; at most 32 members. Several ``tracestate`` header lines are
one list. A list breaking any of these is dropped whole (the request goes on without it; the spec allows
discarding it). A valid list longer than 512 characters, the length every hop must carry, is shortened as
the spec advises: members over 128 characters go first, then members from the right.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_MEMBERS = 32
MAX_LENGTH = 512
_LONG_MEMBER = 128
_MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)


def parse(headers: Iterable[str]) -> str | None:
    """The list to send on (members joined by ``,``); None when there is none or it is invalid."""
    members: list[str] = []
    keys: set[str] = set()
    for header in headers:
        for member in header.split(","):
            member = member.strip(" \t")
            if not member:
                continue
            if _MEMBER.fullmatch(member) is None:
                return None
            key = member[: member.index("=")]
            if key in keys:
                return None
            keys.add(key)
            members.append(member)
            if len(members) > MAX_MEMBERS:
                return None
    if not members:
        return None
    joined = ",".join(members)
    if len(joined) > MAX_LENGTH:
        members = [m for m in members if len(m) <= _LONG_MEMBER]
        while members and len(",".join(members)) > MAX_LENGTH:
            members.pop()
        joined = ",".join(members)
    return joined or None
