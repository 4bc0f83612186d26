"""Secrets the gateway holds, kept out of everything it says: error messages, stream error events and logs.

Two nets: the exact values the gateway knows (deployment API keys and credentials, tracing headers: registered
when a config is built), and patterns of credentials it cannot know (``Bearer …``, ``sk-…``, ``gw-…``,
``api_key=…``), since an upstream may echo any header it was sent. The registry is per process on purpose:
the log is per process too, and an error raised anywhere must be scrubbed without threading a scrubber
through every layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
_MIN_SECRET = 8  # shorter values would redact ordinary words

_PATTERNS = re.compile(
    r"(?P<prefix>(?i:bearer|basic)\s+|(?i:api[-_]?key|x-api-key|x-goog-api-key|authorization|secret|password|"
    r"token|aws_secret_access_key)[\"']?\s*[:=]\s*[\"']?(?:(?i:bearer|basic)\s+)?)[^\s\"',;}]{6,}"
    r"|sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|gw-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}"
)

_known: frozenset[str] = frozenset()
_known_re: re.Pattern[str] | None = None


def register(values: Iterable[str | None]) -> None:
    """Add secret values (deployment keys, credentials) to the process's set; empty and short ones are skipped."""
    global _known, _known_re
    new = _known | {v for v in values if v and len(v) >= _MIN_SECRET}
    if new == _known:
        return
    _known = new
    # Longest first, so a secret that contains another is replaced whole.
    _known_re = re.compile("|".join(re.escape(v) for v in sorted(new, key=len, reverse=True)))


def known() -> frozenset[str]:
    """The exact secret values registered so far (what a stream is scrubbed of, ``gateway/security/streams.py``)."""
    return _known


def scrub(text: str) -> str:
    """``text`` with every known secret and every credential-shaped token replaced by ``[redacted]``."""
    if _known_re is not None:
        text = _known_re.sub(REDACTED, text)
    return _PATTERNS.sub(_replace, text)


def _replace(match: re.Match[str]) -> str:
    prefix = match.group("prefix")
    return (prefix or "") + REDACTED
